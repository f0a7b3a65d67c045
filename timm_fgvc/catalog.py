"""The catalogue (SPEC §3): method prefix -> display name, the fine-grained datasets the model tags name, and
splitting a model name into its parts.

The lowest layer: `models` (a tag's classes), `benchmarks`, `cards` and `hub` import it and it imports none of
them (timm only, lazily), so the imports point one way (hub -> cards -> benchmarks -> catalog).
"""
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ['METHODS', 'register_method', 'split_model_name', 'DatasetInfo', 'DATASETS']

# method prefix -> display name; a method outside this package adds itself with `register_method`
METHODS: Dict[str, str] = {'s3n': 'S3N', 'lfd': 'LFD', 'caa': 'CAA', 'hsm': 'HSM', 'ssanet': 'SSANet'}


def register_method(prefix: str, display_name: str) -> None:
    """Make `<prefix>_*` models timm-fgvc methods: the engine trains them with their own loss and stages, and cards
    and tables name them `display_name`. A method in this package is listed in `METHODS` above; a plugin calls this
    next to its timm `@register_model` functions."""
    if not (prefix.isidentifier() and prefix.islower() and '_' not in prefix):
        raise ValueError(f'Method prefix {prefix!r}: use lowercase letters and digits without "_" (a model is named '
                         '<prefix>_<backbone>).')
    if METHODS.get(prefix, display_name) != display_name:
        raise ValueError(f'Method prefix {prefix!r} is already {METHODS[prefix]!r}: choose another prefix.')
    import timm  # a prefix of timm's own models would make them methods
    taken = [name for name in timm.list_models(f'{prefix}_*')
             if timm.models.model_entrypoint(name).__module__.startswith('timm.')]
    if taken:
        raise ValueError(f'Method prefix {prefix!r} names timm models ({", ".join(taken[:3])}...): choose another '
                         'prefix.')
    METHODS[prefix] = display_name


def split_model_name(name: str) -> tuple:
    """`'s3n_resnet50.cub200'` -> `('s3n', 'resnet50', 'cub200')`; a plain timm model gives `(None, name, tag)`."""
    arch, _, tag = name.partition('.')
    prefix, _, rest = arch.partition('_')
    if prefix in METHODS and rest:
        return prefix, rest, tag or None
    return None, arch, tag or None


# tag -> the dataset a model fine-tuned on it was trained on, its classes and where to get it
@dataclass(frozen=True)
class DatasetInfo:
    tag: str
    title: str
    num_classes: int
    hub_id: Optional[str]  # a `datasets` id on the Hugging Face Hub
    license: str = 'other'


DATASETS: Dict[str, DatasetInfo] = {info.tag: info for info in (
    DatasetInfo('cub200', 'CUB-200-2011', 200, 'bentrevett/caltech-ucsd-birds-200-2011'),
    DatasetInfo('aircraft', 'FGVC-Aircraft', 100, 'HuggingFaceM4/FGVC-Aircraft'),
    DatasetInfo('cars', 'Stanford Cars', 196, 'tanganke/stanford_cars'),
    DatasetInfo('flowers102', 'Oxford Flowers-102', 102, 'nelorth/oxford-flowers'),
    DatasetInfo('synthetic', 'timm-fgvc synthetic parts', 10, None, license='apache-2.0'),
)}
