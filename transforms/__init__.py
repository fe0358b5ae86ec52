"""The API users write their transforms against, and the pure translation core the worker uses.

A transform module builds `Pair`s at import time; `load_registry` imports and validates them;
`Pair.convert` / `Pair.translate_update` turn documents and update events of one side into
documents and field-level patches for the other.
"""

from __future__ import annotations

from transforms._check import CheckStatus, MappingReport, check_pair
from transforms._loader import ENTRY_POINT_GROUP, load_registry
from transforms._mappings import Direction, FieldMapping, MappingKind
from transforms._pair import Derivation, Pair
from transforms._patch import (
    Patch,
    apply_patch,
    apply_update_description,
    diff_documents,
    named_fields,
    unaddressable_field,
)
from transforms._paths import MISSING
from transforms._registry import Registry, Side
from transforms.errors import TransformError, TransformFailed, TransformLoadError

__all__ = [
    "ENTRY_POINT_GROUP",
    "MISSING",
    "CheckStatus",
    "Derivation",
    "Direction",
    "FieldMapping",
    "MappingKind",
    "MappingReport",
    "Pair",
    "Patch",
    "Registry",
    "Side",
    "TransformError",
    "TransformFailed",
    "TransformLoadError",
    "apply_patch",
    "apply_update_description",
    "check_pair",
    "diff_documents",
    "load_registry",
    "named_fields",
    "unaddressable_field",
]
