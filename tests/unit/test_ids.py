"""Ids: Crockford base32 digits that decode back and sort like the numbers they encode."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blueline import ids

lengths_and_values = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=32**n - 1))
)


@given(lengths_and_values)
def test_a_value_decodes_back_from_its_fixed_width_digits(case: tuple[int, int]) -> None:
    length, value = case
    encoded = ids.encode_sortable(value, length)
    assert len(encoded) == length
    assert ids.decode_sortable(encoded) == value


@given(st.lists(st.integers(min_value=0, max_value=2**128 - 1), min_size=2, max_size=20))
def test_encoded_values_sort_like_the_numbers(values: list[int]) -> None:
    assert sorted(values, key=lambda v: ids.encode_sortable(v, 26)) == sorted(values)


@pytest.mark.parametrize("value", [-1, 32**4])
def test_a_value_outside_its_digits_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        ids.encode_sortable(value, 4)


def test_new_ids_are_prefixed_well_formed_and_increasing() -> None:
    made = [ids.new_id(ids.EVENT) for _ in range(1000)]
    assert all(ids.prefix_of(i) == ids.EVENT for i in made)
    assert made == sorted(made)
    assert len(set(made)) == len(made)
