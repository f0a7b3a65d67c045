"""Loading weights safely: safetensors first, `torch.load(weights_only=True)` otherwise, with clear errors."""
from pathlib import Path
from typing import Union

import torch.nn as nn

from ..models._weights import classifier_names, read_state_dict

__all__ = ['read_state_dict', 'load_weights']


def load_weights(model: nn.Module, path: Union[str, Path]) -> None:
    """Load a state dict into `model`; a head-size mismatch says which num_classes the file was made for."""
    state = read_state_dict(path)
    own = model.state_dict()
    heads = classifier_names(model)
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
