import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from softudc.model.contracttypes import Document, Given, Number, Size


class Doc(Document):
    n: Given[Number] = None
    size: Size | None = None


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_a_finite_number_stays_what_it_came_as(v: float) -> None:
    assert type(Doc(n=v).n) is type(v)


@pytest.mark.parametrize("bad", [math.inf, math.nan, "8", True, None])
def test_no_infinite_string_bool_or_null_number(bad: object) -> None:
    with pytest.raises(ValidationError):
        Doc.model_validate({"n": bad})


def test_a_size_is_two_positive_integers_or_nulls_and_unknown_fields_are_refused() -> None:
    assert Doc(size=[2, None]).size == [2, None]
    for bad in ([0, 1], [1], "2x1"):
        with pytest.raises(ValidationError):
            Doc.model_validate({"size": bad})
    with pytest.raises(ValidationError, match="extra"):
        Doc.model_validate({"other": 1})
