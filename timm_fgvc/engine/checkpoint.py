"""Loading weights safely: safetensors first, `torch.load(weights_only=True)` otherwise, with clear errors."""
from pathlib import Path
from typing import Dict, Union

import torch
import torch.nn as nn

__all__ = ['read_state_dict', 'load_weights']


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        path = path / 'model.safetensors'
    if not path.is_file():
        raise FileNotFoundError(f'No checkpoint file at {path}.')
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:  # safetensors and torch raise several types for a damaged file
        raise ValueError(f'Checkpoint {path} is corrupt or not a weights file ({type(e).__name__}: {e}). '
                         'Re-export it, or resume from an earlier checkpoint.') from e
    if isinstance(state, dict) and 'state_dict' in state:
        state = state['state_dict']
    if not isinstance(state, dict):
        raise ValueError(f'Checkpoint {path} holds a {type(state).__name__}, not a state dict.')
    return state


def load_weights(model: nn.Module, path: Union[str, Path]) -> None:
    """Load a state dict into `model`; a head-size mismatch says which num_classes the file was made for."""
    state = read_state_dict(path)
    own = model.state_dict()
    heads = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    for name, tensor in state.items():
        if name not in own or own[name].shape == tensor.shape:
            continue
        if any(name.startswith(h + '.') for h in heads):
            raise ValueError(f'Checkpoint {path} was trained for {tensor.shape[0]} classes but the model has '
                             f'{own[name].shape[0]} (tensor {name}). Build the model with '
                             f'num_classes={tensor.shape[0]}, or load it first and call reset_classifier().')
        raise ValueError(f'Checkpoint {path} does not fit this model: {name} is {tuple(tensor.shape)} in the '
                         f'file and {tuple(own[name].shape)} in the model. Was it made for another architecture?')
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f'Checkpoint {path} does not match the model: missing {missing[:5]}, unexpected '
                         f'{unexpected[:5]}. Was it made for another architecture or backbone?')
