"""core/request_ids.py: the gateway's own request ids, and telling them from the clients'."""

from __future__ import annotations

import pytest

from app.core import request_ids


def test_new_ids_are_the_prefix_and_a_counter() -> None:
    (first, first_counter), (second, second_counter) = (
        request_ids.new_request_id(),
        request_ids.new_request_id(),
    )
    assert len(first) == 16 and first.startswith(request_ids.PREFIX)
    assert first != second
    assert second_counter == first_counter + 1
    # the counter handed on with an id is the one an outcome naming it reads back
    assert request_ids.own_counter(first) == first_counter
    assert request_ids.own_counter(second) == second_counter


@pytest.mark.parametrize(
    "suffix", ["0000000A", "0x123456", "+0000001", " 0000001", "0000_001", "000000001", "0000001"]
)
def test_ids_not_shaped_like_ours_are_not_counters(suffix: str) -> None:
    assert request_ids.own_counter(request_ids.PREFIX + suffix) is None


def test_another_prefix_is_not_ours() -> None:
    other = "0" * 8 if request_ids.PREFIX != "0" * 8 else "1" * 8
    assert request_ids.own_counter(other + "00000001") is None
    assert request_ids.own_counter("client-chosen-id") is None
