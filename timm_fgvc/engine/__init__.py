"""Training engine: typed config, loop (Accelerate), atomic checkpoints and safe weight loading."""
from .checkpoint import find_checkpoint, load_weights, read_state_dict, save_checkpoint
from .config import TrainConfig, parse_args
