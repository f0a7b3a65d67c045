"""The method catalogue: method prefix -> display name (SPEC §3), and splitting a model name into its parts.

The lowest layer of the reporting modules: `benchmarks`, `cards` and `hub` import it and it imports none of
them, so the imports point one way (hub -> cards -> benchmarks -> catalog).
"""
from typing import Dict

__all__ = ['METHODS', 'split_model_name']

# method prefix -> display name
METHODS: Dict[str, str] = {'s3n': 'S3N', 'lfd': 'LFD', 'caa': 'CAA', 'hsm': 'HSM', 'ssanet': 'SSANet'}


def split_model_name(name: str) -> tuple:
    """`'s3n_resnet50.cub200'` -> `('s3n', 'resnet50', 'cub200')`; a plain timm model gives `(None, name, tag)`."""
    arch, _, tag = name.partition('.')
    prefix, _, rest = arch.partition('_')
    if prefix in METHODS and rest:
        return prefix, rest, tag or None
    return None, arch, tag or None
