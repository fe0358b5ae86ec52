"""Example transform modules, one per kind of schema change (see docs/transforms.md)."""
