"""Shared FGVC building blocks: one concept per file, reused across methods."""
