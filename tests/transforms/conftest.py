"""Pairs shared by the transform tests, built fresh for each test."""

from __future__ import annotations

import pytest

from tests.transforms.pairs import build_reference_pair
from transforms import Pair


@pytest.fixture
def reference_pair() -> Pair:
    """The reference pair with unmapped fields kept."""
    return build_reference_pair()
