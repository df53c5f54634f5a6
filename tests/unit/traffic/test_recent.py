"""RecentTable: the bounded memory of which arm served recent requests."""

from __future__ import annotations

from app.traffic.recent import CounterRing, RecentTable


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


def test_counter_ring_keeps_the_last_size_counters() -> None:
    ring: CounterRing[str] = CounterRing(size=8)
    for counter in range(20):
        ring.remember(counter, f"v{counter}")
    assert [ring.get(c) for c in range(12, 20)] == [f"v{c}" for c in range(12, 20)]
    assert ring.get(11) is None  # its slot now holds 19
    assert ring.get(3) is None
    assert ring.get(1000) is None  # never written
