"""MongoDB's order of values (`devserver._compare.compare`), which filters and aggregation
comparisons of the development server use where mongomock used Python's."""

from __future__ import annotations

import datetime
import itertools
import re
from typing import Any

from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from hypothesis import given
from hypothesis import strategies as st

from devserver._compare import NOTHING, compare, equal


def test_types_come_in_mongodbs_order() -> None:
    """MinKey, (missing), null, numbers, strings, documents, arrays, binary data, ObjectId,
    booleans, dates, timestamps, regular expressions, MaxKey."""
    ordered = [
        MinKey(),
        NOTHING,
        None,
        -5,
        "",
        {},
        [],
        b"",
        ObjectId("000000000000000000000000"),
        False,
        datetime.datetime(1970, 1, 1),
        Timestamp(0, 0),
        Regex("a"),
        MaxKey(),
    ]
    for low, high in zip(ordered, ordered[1:], strict=False):
        assert compare(low, high) == -1, (low, high)
        assert compare(high, low) == 1, (high, low)


def test_values_within_a_type() -> None:
    assert equal(1, 1.0) and equal(Int64(1), Decimal128("1.00")) and equal(2**40, float(2**40))
    assert compare(Decimal128("0.1"), 0.1) == -1  # the double is a little more than 0.1
    assert equal(float("nan"), Decimal128("NaN"))
    assert compare(float("nan"), float("-inf")) == -1  # NaN below every other number
    assert not equal(True, 1) and compare(0, False) == -1
    assert compare({"a": 1, "b": 2}, {"b": 2, "a": 1}) == -1  # by name, in order
    assert compare({"a": 1}, {"a": "x"}) == -1  # a pair's type before its value
    assert compare({"a": 1}, {"a": 1, "b": 0}) == -1  # fewer fields first
    assert compare([1, 2], [1, 2, 0]) == -1 and compare([2], [1, 9]) == 1
    assert compare(b"zz", b"aaa") == -1  # binary data by length first
    assert compare(Binary(b"a", 0), Binary(b"a", 4)) == -1  # then subtype
    aware = datetime.datetime(2026, 1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert equal(aware, datetime.datetime(2026, 1, 1))
    assert compare(Timestamp(5, 9), Timestamp(6, 0)) == -1
    assert equal(Regex("a", "i"), re.compile("a", re.IGNORECASE))
    assert compare("B", "a") == -1  # code points, no collation


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 2.0, float("nan"), float("inf")]),
    st.sampled_from([Decimal128("1"), Decimal128("NaN"), Int64(2)]),
    st.text(alphabet="ab", max_size=2),
    st.binary(max_size=2),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
    ),
    max_leaves=6,
)


@given(_values, _values, _values)
def test_the_order_is_a_total_order(left: Any, middle: Any, right: Any) -> None:
    assert compare(left, left) == 0
    assert compare(left, middle) == -compare(middle, left)
    for a, b, c in itertools.permutations([left, middle, right]):
        if compare(a, b) <= 0 and compare(b, c) <= 0:
            assert compare(a, c) <= 0, (a, b, c)
        if compare(a, b) == 0 and compare(b, c) == 0:
            assert compare(a, c) == 0, (a, b, c)
