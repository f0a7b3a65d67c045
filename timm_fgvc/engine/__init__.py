"""Training engine: config, loop (Accelerate) and safe checkpoint loading."""
from .checkpoint import load_weights, read_state_dict
from .config import TrainConfig, parse_args
