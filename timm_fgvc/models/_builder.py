"""Registration helpers: pretrained cfgs as data and one builder for every method (SPEC §3).

A method file declares `default_cfgs = generate_default_cfgs({...fgvc_cfg(...)...})` and one short
`@register_model` function per variant calling `build_fgvc_model`, exactly as timm's own model files do.
"""
import inspect
import json
from typing import Any, Dict, Optional, Sequence, Tuple

import timm
import torch.nn as nn
from timm.models import build_model_with_cfg, load_pretrained
from timm.models._builder import resolve_pretrained_cfg

from ..catalog import DATASETS

__all__ = ['HUB_ORG', 'PUBLISHED_WEIGHTS', 'VIT_BACKBONE_CFG', 'SWIN_BACKBONE_CFG', 'fgvc_cfg', 'tagged_cfgs',
           'build_fgvc_model', 'init_args',
           'UnpublishedWeightsError', 'ModelBuildError', 'create_model_or_explain']

HUB_ORG = 'timm-fgvc'

# Hub ids whose weights are uploaded; a tag not listed here fails early with how to train it.
# Keep in sync with `published: true` in hub_configs/ (tests/test_model_cards.py checks this).
PUBLISHED_WEIGHTS: frozenset = frozenset()

_PAPER_MEAN = (0.485, 0.456, 0.406)
_PAPER_STD = (0.229, 0.224, 0.225)

# a variant on a transformer backbone reads the image with its patch embedding, preprocessed as timm's weights were
_PATCH_EMBED_CFG = dict(first_conv='backbone.patch_embed.proj', interpolation='bicubic')
SWIN_BACKBONE_CFG = dict(_PATCH_EMBED_CFG)  # ImageNet mean and std
VIT_BACKBONE_CFG = dict(_PATCH_EMBED_CFG, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class UnpublishedWeightsError(RuntimeError):
    pass


def fgvc_cfg(
        classifier: Sequence[str],
        paper_name: str,
        paper_ids: str,
        origin_url: Optional[str] = None,  # the authors' code, where public
        dataset: Optional[str] = None,
        input_size: int = 448,
        test_input_size: Optional[int] = None,
        crop_pct: float = 448 / 512,
        **kwargs: Any,
) -> Dict[str, Any]:
    """A pretrained cfg for a method variant; with `dataset` set it names a fine-tuned tag on the Hub."""
    cfg = dict(
        num_classes=DATASETS[dataset].num_classes if dataset else 1000,
        input_size=(3, input_size, input_size),
        test_input_size=(3, test_input_size, test_input_size) if test_input_size else None,
        crop_pct=crop_pct,
        crop_mode='center',
        interpolation='bilinear',
        mean=_PAPER_MEAN,
        std=_PAPER_STD,
        classifier=tuple(classifier),
        license='apache-2.0',
        paper_name=paper_name,
        paper_ids=paper_ids,
        origin_url=origin_url,
        first_conv='backbone.conv1',
    )
    cfg.update(kwargs)
    return cfg


def tagged_cfgs(variant: str, tags: Sequence[str], **kwargs: Any) -> Dict[str, Dict[str, Any]]:
    """`{'<variant>.<tag>': cfg}` for each dataset tag, each pointing at `timm-fgvc/<variant>.<tag>`.

    The first tag is the variant's default (as in timm, where `resnet50` means its first tag).
    """
    return {
        f'{variant}.{tag}': fgvc_cfg(dataset=tag, hf_hub_id=f'{HUB_ORG}/{variant}.{tag}', **kwargs)
        for tag in tags
    }


# timm's model flags (train.py --drop-path / --drop-block) that are the backbone's: passed on to it
_BACKBONE_KWARGS = ('drop_path_rate', 'drop_block_rate')


def check_method_contract(model) -> None:
    """What the engine, timm and export read from every method, checked when it is built (a new method's mistake
    fails here, not at export or at the first reset_classifier)."""
    name, heads = type(model).__name__, sorted(model.heads)
    if model.main_head not in model.heads:
        raise ModelBuildError(f'{name}.main_head is {model.main_head!r}, which names none of its heads {heads}: set it '
                              'to the head whose weights give its attention and get_classifier().')
    unlisted = sorted(set(model.heads) - set(model._head_features))
    if unlisted:
        raise ModelBuildError(f'{name} built heads {unlisted} without add_head: build every head with '
                              'self.add_head(name, in_features), so reset_classifier can rebuild it.')
    if not isinstance(getattr(model, 'num_features', None), int):
        raise ModelBuildError(f'{name} sets no num_features: set self.num_features = self.head_hidden_size = the '
                              'width of forward_head(..., pre_logits=True), which timm and export read.')


def build_fgvc_model(model_cls, variant: str, pretrained: bool = False, **kwargs):
    """`build_model_with_cfg` with a clear error for tags whose weights are not published yet; timm's backbone flags
    (`drop_path_rate`, `drop_block_rate`) go into `backbone_args`."""
    if kwargs.get('features_only'):
        raise ModelBuildError(f'{variant} has no features_only form (its prediction needs its heads and attention): '
                              'build its backbone with timm.create_model(<backbone>, features_only=True), or use '
                              'model.forward_features / model.attention_maps.')
    if kwargs.get('global_pool') is not None:
        raise ModelBuildError(f'{variant} pools as its paper does, so global_pool cannot be set '
                              f'(got {kwargs["global_pool"]!r}).')
    kwargs.pop('global_pool', None)
    passed = {k: kwargs.pop(k) for k in _BACKBONE_KWARGS if k in kwargs}
    if passed:
        kwargs['backbone_args'] = {**passed, **(kwargs.get('backbone_args') or {})}
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        from_registry = cfg.source is None and not (cfg.file or cfg.url or cfg.state_dict)
        hub_id = cfg.hf_hub_id
        if from_registry and (hub_id is None or hub_id.startswith(HUB_ORG + '/')) and hub_id not in PUBLISHED_WEIGHTS:
            name = f'{variant}.{cfg.tag}' if cfg.tag else variant
            recipe = (f'--config hub_configs/{name}.yaml' if cfg.tag  # every dataset tag has its paper's recipe
                      else f'--model {variant} --dataset <Hub id or image folder>')
            raise UnpublishedWeightsError(
                f'No published weights for {name!r}'
                + (f' (Hub repo {hub_id} is not released yet)' if hub_id else '') + '. Train them with\n'
                f'  accelerate launch train_fgvc.py {recipe}\n'
                'then load the result with timm.create_model(..., checkpoint_path="<output>/model.safetensors") '
                'or export it (timm-fgvc export) and use "hf-hub:<your-repo>" / "local-dir:<folder>". '
                'Use pretrained=False with pretrained_backbone=True for ImageNet backbone weights only.')
    model = build_model_with_cfg(model_cls, variant, False, **kwargs)
    check_method_contract(model)
    # the heads and image readers of this instance (CAA's per-scale heads, a second backbone's stem), not the
    # variant's defaults: timm reads both when it loads weights for other classes or channels
    model.pretrained_cfg.update(classifier=model.classifier_names, first_conv=model.input_convs)
    if hasattr(model, '_traits'):  # timm >= 1.0.26 reads the stem from the model's traits first
        model._traits['first_conv'] = model.input_convs
    if pretrained:
        cache = {'cache_dir': kwargs['cache_dir']} if kwargs.get('cache_dir') else {}
        load_pretrained(model, pretrained_cfg=model.pretrained_cfg, num_classes=model.num_classes,
                        in_chans=kwargs.get('in_chans', 3), **cache)
    model.init_args = init_args(model_cls, kwargs)
    return model


# set per run or per load, never part of what the model is
_NOT_RECORDED = ('self', 'num_classes', 'pretrained_backbone')


def init_args(model_cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Every constructor argument of `model_cls` as this build resolved it (given, else the default), JSON values
    only: a run records them, so a default changed later cannot change the model it reloads."""
    resolved = {}
    own, passed_on = _constructor_parameters(model_cls)
    for name, param in {**own, **{k: v for k, v in passed_on.items() if k in kwargs}}.items():
        if name in _NOT_RECORDED:
            continue
        value = kwargs.get(name, param.default)
        try:
            json.dumps(value)
        except TypeError:
            continue
        if value is not param.empty:
            resolved[name] = value
    return resolved


def _constructor_parameters(model_cls) -> Tuple[Dict[str, inspect.Parameter], Dict[str, inspect.Parameter]]:
    """(the named parameters of `model_cls.__init__`, those of its bases' that its `**kwargs` pass on). Of the
    second, only the given ones are recorded: a subclass may fix a base argument in its `super().__init__` call
    (a method written as `__init__(self, threshold=0.5, **kwargs)` still records the backbone it was given)."""
    own: Dict[str, inspect.Parameter] = {}
    passed_on: Dict[str, inspect.Parameter] = {}
    found = own  # the first constructor's parameters, then its bases'
    for cls in model_cls.__mro__:
        if cls is nn.Module:
            break
        if '__init__' not in vars(cls):
            continue
        params = inspect.signature(vars(cls)['__init__']).parameters.values()
        for param in params:
            if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD) and param.name not in ('self', *own):
                found.setdefault(param.name, param)
        if not any(param.kind == param.VAR_KEYWORD for param in params):
            break
        found = passed_on
    return own, passed_on


class ModelBuildError(ValueError):
    """timm cannot build the model as asked: an unknown name, or an argument the model does not take."""


def create_model_or_explain(name: str, shown_as: Optional[str] = None, **kwargs) -> nn.Module:
    """`timm.create_model(name, **kwargs)`; an unknown name or an argument the model does not take (`--model-args`,
    another model's run) is a `ModelBuildError` that says what to give. `shown_as`: the name the user gave."""
    shown_as = shown_as or name
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ModelBuildError(f'Unknown model {shown_as!r}: use a registered name '
                                  '(`timm.list_models("s3n_*")`), hf-hub:<repo> or local-dir:<folder>.') from e
        raise
    except TypeError as e:
        raise ModelBuildError(f'{shown_as} cannot be built with {sorted(kwargs)}: {e}') from e
    except OSError as e:  # huggingface_hub's errors name neither the repo nor offline mode
        if not name.startswith(('hf-hub:', 'hf_hub:')) or type(e).__module__.split('.')[0] != 'huggingface_hub':
            raise
        from huggingface_hub import constants
        where = ('HF_HUB_OFFLINE is set, so only the local cache was read' if constants.HF_HUB_OFFLINE
                 else 'check the repo id and your connection')
        raise OSError(f'Could not load {name[len("hf-hub:"):]!r} from the Hugging Face Hub ({where}): '
                      f'{type(e).__name__}: {str(e).splitlines()[0]}') from e
