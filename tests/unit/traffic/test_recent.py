"""RecentTable: the bounded memory of which arm served recent requests."""

from __future__ import annotations

from app.traffic.recent import RecentTable


def test_keeps_at_least_the_last_keep_keys_and_at_most_twice_as_many() -> None:
    table: RecentTable[int] = RecentTable(keep=100)
    for i in range(1000):
        table.remember(f"id-{i}", i)
        assert len(table) <= 200
        # every one of the last 100 keys is still there
        for j in range(max(0, i - 99), i + 1):
            assert table.get(f"id-{j}") == j
    assert table.get("id-0") is None
    assert table.get("id-799") is None


def test_a_key_written_again_answers_its_newest_value() -> None:
    table: RecentTable[str] = RecentTable(keep=3)
    table.remember("user", "a")
    table.remember("x", "x")
    table.remember("y", "y")  # young generation full: becomes the old one
    table.remember("user", "b")
    assert table.get("user") == "b"
    assert table.get("missing") is None
