"""The public names of each package, pinned so that a change to them is a deliberate one."""

from __future__ import annotations

import transforms


def test_transforms_exports() -> None:
    """`transforms` exports exactly the documented API, and every name in `__all__` exists."""
    assert sorted(transforms.__all__) == [
        "CheckStatus",
        "Derivation",
        "Direction",
        "ENTRY_POINT_GROUP",
        "FieldMapping",
        "MISSING",
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
    for name in transforms.__all__:
        assert getattr(transforms, name) is not None
