"""`_id` keys: equal for MongoDB-equal ids, distinct otherwise, whichever way they are built."""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson import Int64, ObjectId
from hypothesis import given
from hypothesis import strategies as st

from devserver._keys import canonical, id_key

_IDS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(),
    st.binary(min_size=12, max_size=12).map(ObjectId),
    st.floats(allow_nan=False),
    st.booleans(),
)


# Sub-document ids such as the worker's merge base `{pair, id}`, with values canonical as they
# are and values `canonical` changes (a float, an Int64, a nested sub-document).
_SUB_DOCUMENT_IDS = st.dictionaries(
    st.text(alphabet="abcxyz", min_size=1, max_size=3),
    _IDS | st.none() | st.integers(0, 2**40).map(Int64) | st.fixed_dictionaries({"n": _IDS}),
    max_size=3,
)


@given(_IDS | _SUB_DOCUMENT_IDS)
def test_id_key_is_the_canonical_encoding(doc_id: Any) -> None:
    """The spelled-out keys of common `_id` types are the bytes BSON gives `{k: canonical(id)}`."""
    assert id_key(doc_id) == bson.encode({"k": canonical(doc_id)})


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        pytest.param(1, 1.0, True, id="int-double"),
        pytest.param(1, Int64(1), True, id="int-Int64"),
        pytest.param(2**40, float(2**40), True, id="int64-double"),
        pytest.param(1, True, False, id="int-bool"),
        pytest.param(0, False, False, id="zero-false"),
        pytest.param("1", 1, False, id="string-int"),
        pytest.param("a", "a\x00", False, id="trailing-nul"),
    ],
)
def test_id_keys_collide_exactly_for_mongodb_equal_ids(left: Any, right: Any, equal: bool) -> None:
    """Numbers equal in MongoDB share a key; values of other types never do."""
    assert (id_key(left) == id_key(right)) is equal
