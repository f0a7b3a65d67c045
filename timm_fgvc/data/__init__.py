"""Datasets, the embedded synthetic FGVC set and transforms."""
