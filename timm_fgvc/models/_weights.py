"""Reading weight files safely and loading a plain timm model's weights into a backbone (`--pretrained-path`).

Safetensors first, `torch.load(weights_only=True)` otherwise. `load_backbone_weights` is timm's
`train.py --pretrained-path` for one backbone: the file's classifier is dropped when it does not fit, and every
other key must match (a file that does not fit names its missing / unexpected keys).
"""
import sys
from pathlib import Path
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn

__all__ = ['read_state_dict', 'state_dict_keys', 'model_state', 'load_backbone_weights', 'load_fine_tune_weights',
           'is_method_state', 'classifier_names']


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file (or of `<dir>/model.safetensors`), with a clear error for a damaged one."""
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
        # torch's weights_only refusal advises weights_only=False (code execution): not advice to pass on
        reason = ('torch.load(weights_only=True) refused it: not tensors only' if 'Weights only load failed' in str(e)
                  else f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}')
        raise ValueError(f'Checkpoint {path} is corrupt or not a weights file ({reason}). Give a .safetensors or '
                         '.pth state dict, an exported folder or a run folder; re-export it, or resume from an '
                         'earlier checkpoint.') from e
    if isinstance(state, dict) and 'state_dict' in state:
        state = state['state_dict']
    if not isinstance(state, dict):
        raise ValueError(f'Checkpoint {path} holds a {type(state).__name__}, not a state dict.')
    return state


def state_dict_keys(path: Union[str, Path]) -> Sequence[str]:
    """The tensor names of a weights file (or of `<dir>/model.safetensors`); a safetensors file's header only, so a
    check of what a file holds does not load its tensors."""
    path = Path(path)
    if path.is_dir():
        path = path / 'model.safetensors'
    if path.suffix == '.safetensors' and path.is_file():
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework='pt') as f:
                return list(f.keys())
        except Exception:  # a damaged file: read_state_dict says so clearly
            pass
    return list(read_state_dict(path))


def model_state(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """`state` with the training wrapper's `model.` prefix removed when every key has it and `model`'s own keys do
    not (a train_fgvc.py checkpoint holds `TrainStep.model`)."""
    if state and all(k.startswith('model.') for k in state) and not any(k.startswith('model.') for k in
                                                                          model.state_dict()):
        return {k[len('model.'):]: v for k, v in state.items()}
    return state


def classifier_names(model: nn.Module) -> Sequence[str]:
    """State-dict prefixes of a timm model's classifier(s), from its pretrained_cfg."""
    heads = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    return (heads,) if isinstance(heads, str) else tuple(heads)


def _listing(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    return ', '.join(keys[:limit]) + (f' (+{len(keys) - limit} more)' if len(keys) > limit else '')


def _timm_filter(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The model family's own `checkpoint_filter_fn` where timm has one (a ViT's position embedding resampled to
    the model's grid, Swin's relative-position tables), as timm's pretrained loading does."""
    for cls in type(model).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and module.__name__.startswith('timm.models.'):
            filter_fn = getattr(module, 'checkpoint_filter_fn', None)
            return filter_fn(state, model) if filter_fn is not None else state
    return state


def load_backbone_weights(model: nn.Module, path: Union[str, Path]) -> None:
    """Load a plain timm model's weights from a local file into `model` (a backbone or a baseline).

    The file's classifier keys are dropped when the model's classifier has another shape or none
    (`num_classes=0`); any other key the model lacks, or lacks in the file, or whose shape differs, is an error
    that names the keys. BatchNorm's `num_batches_tracked` counters are not required.
    """
    state = read_state_dict(path)
    if is_method_state(state) and not is_method_state(model.state_dict()):
        raise ValueError(f'{path} holds a timm-fgvc method (its backbone under `backbone.`), not a plain timm model: '
                         'load it into the same method with timm.create_model(..., checkpoint_path=FILE) or '
                         'pretrained=True with pretrained_cfg_overlay=dict(file=FILE) (train_fgvc.py --pretrained-path '
                         'does this for a method of the same kind).')
    state = _adapt_input_convs(model, _timm_filter(model, state))
    _load_dropping_classifier(model, state, path, 'The file must hold a plain timm model of the same architecture.')


def _adapt_input_convs(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """RGB stem weights for a model built with other `in_chans` (summed for 1, repeated for more), as timm's
    pretrained loading adapts them."""
    from timm.models import adapt_input_conv
    convs = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv') or ()
    for name in ((convs,) if isinstance(convs, str) else convs):
        key, module = f'{name}.weight', model.get_submodule(name)
        weight = state.get(key)
        if weight is not None and weight.ndim == 4 and weight.shape[1] == 3 != module.weight.shape[1]:
            state[key] = adapt_input_conv(module.in_channels, weight)
    return dict(state)


def is_method_state(keys: Sequence[str]) -> bool:
    """True for the tensor names of a timm-fgvc method (its backbone under `backbone.`; a training checkpoint's
    keys carry `model.` before that), False for a plain timm model's."""
    return any(k.startswith(('backbone.', 'model.backbone.')) for k in keys)


def load_fine_tune_weights(model: nn.Module, path: Union[str, Path]) -> None:
    """Load a trained method's weights (an exported folder, a weights file or a run's checkpoint) into a method of
    the same architecture for fine-tuning on another label set: every tensor but a classifier that does not fit
    (the new task's classifier stays as built), as `load_backbone_weights` does for a plain model. The HSM paper's
    step 2 starts this way from its step-1 model (saliency branch trained, ImageNet head replaced)."""
    _load_dropping_classifier(model, model_state(read_state_dict(path), model), path,
                              'The file must hold a model of the same method and backbone.')


def _load_dropping_classifier(model: nn.Module, state: Dict[str, torch.Tensor], path: Union[str, Path],
                              hint: str) -> None:
    own = model.state_dict()
    heads = classifier_names(model)
    is_head = lambda k: any(k.startswith(h + '.') for h in heads)  # noqa: E731
    state = {k: v for k, v in state.items() if not (is_head(k) and (k not in own or own[k].shape != v.shape))}
    unexpected = sorted((k for k in state if k not in own), key=lambda k: k.endswith('num_batches_tracked'))
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked') and not is_head(k)]
    mismatched = [f'{k} {tuple(v.shape)} in the file vs {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if unexpected or missing or mismatched:
        name = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
        problems = [f'{label}: {_listing(keys)}' for label, keys in
                    (('missing in the file', missing), ('unexpected in the file', unexpected),
                     ('shape differs', mismatched)) if keys]
        raise ValueError(f'Pretrained weights {path} do not fit {name!r}: ' + '; '.join(problems) + '. ' + hint)
    model.load_state_dict(state, strict=False)
