"""app/rpc/h2/frame_quota.py: the server-wide count of incomplete frames, and which connection
makes room when it is full (the one whose frame stalled longest; none that is still young)."""

from __future__ import annotations

from app.rpc.h2.frame_quota import (
    INCOMPLETE_FRAMES_MIN,
    STALLED_FRAME_SECONDS,
    FrameQuota,
    frame_quota_bytes,
)


class Holder:
    def __init__(self, name: str, since: float) -> None:
        self.peer = name
        self.partial_since = since
        self.evicted = False

    def evict_stalled_frame(self) -> None:
        self.evicted = True


def test_holding_and_releasing_keeps_the_count() -> None:
    quota = FrameQuota(100)
    a, b = Holder("a", 0.0), Holder("b", 0.0)
    assert quota.hold(a, 60, now=0.0) and quota.hold(b, 40, now=0.0)
    assert quota.held_bytes == 100 and quota.holders == {a: 60, b: 40}
    quota.release(a)
    quota.release(a)  # twice: nothing more leaves
    assert quota.held_bytes == 40 and quota.holders == {b: 40}


def test_without_a_stalled_frame_the_newcomer_is_refused() -> None:
    quota = FrameQuota(100)
    old = Holder("old", 10.0)
    assert quota.hold(old, 80, now=10.0)
    now = 10.0 + STALLED_FRAME_SECONDS * 0.9
    assert not quota.hold(Holder("new", now), 30, now=now)
    assert not old.evicted and quota.held_bytes == 80 and quota.closed == 1


def test_stalled_frames_make_room_oldest_first_and_only_as_much_as_needed() -> None:
    quota = FrameQuota(100)
    first, second, young = Holder("first", 0.0), Holder("second", 1.0), Holder("young", 9.9)
    for holder in (first, second, young):
        assert quota.hold(holder, 30, now=holder.partial_since)
    now = 10.0
    newcomer = Holder("newcomer", now)
    assert quota.hold(newcomer, 40, now=now)  # 130 > 100: one eviction is enough
    assert first.evicted and not second.evicted and not young.evicted
    assert quota.held_bytes == 100 and first not in quota.holders
    assert quota.hold(Holder("next", now), 30, now=now)  # second goes; young is too young
    assert second.evicted and not young.evicted
    assert not quota.hold(Holder("bigger", now), 90, now=now)
    assert not young.evicted and quota.closed == 3


def test_the_quota_is_an_eighth_of_the_request_quota_but_holds_a_few_frames() -> None:
    assert frame_quota_bytes(1 << 30, 1 << 20) == 128 << 20
    assert frame_quota_bytes(3 << 20, 1 << 20) == INCOMPLETE_FRAMES_MIN << 20
