"""Transforms, one module per family."""
