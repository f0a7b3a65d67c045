"""The methods the generic tests run, read from the catalogue: a method listed there (timm_fgvc/catalog.py
METHODS) is tested like the others through its `<prefix>_tiny` variant (on timm's 0.4 M-parameter test_resnet)."""
from timm_fgvc.catalog import METHODS

METHOD_PREFIXES = tuple(METHODS)
TINY_VARIANTS = tuple(f'{prefix}_tiny' for prefix in METHODS)
