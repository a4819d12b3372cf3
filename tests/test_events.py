"""weir.events.event_of: the positional constructor of the readers' hot loops is Event(...)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weir.events import Event, event_of

values = st.tuples(
    st.text(max_size=5), st.text(max_size=5), st.integers(0, 2**64 - 1), st.integers(0, 9), st.text(max_size=5),
    st.binary(max_size=5), st.binary(max_size=5), st.floats(allow_nan=False), st.floats(allow_nan=False),
    st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=3),
)


@given(values)
def test_event_of_is_the_keyword_constructor(fields: tuple) -> None:
    names = [field.name for field in attrs.fields(Event)]
    made = event_of(*fields)
    assert made == Event(**dict(zip(names, fields, strict=True)))
    assert [getattr(made, name) for name in names] == list(fields)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        made.position = 1  # type: ignore[misc]
