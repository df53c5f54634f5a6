"""bench/traffic_flip.py: phases in alternating order around each rule change, every pair a
no-rule phase and its comparison's phase; the median's confidence interval."""

from __future__ import annotations

import asyncio
import os

import pytest

from app.serving import adaptive_batching
from app.serving.adaptive_batching import AdaptiveCap, GatewayCpuMeter
from bench.traffic_flip import (
    AA_CONTROL,
    SETTLE_SECONDS,
    Comparison,
    Phase,
    flip,
    median_with_interval,
    rank_sum_p,
    ratios,
    render,
)

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


async def _answer_everything(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, paths: list[bytes] | None = None
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if paths is not None:
                paths.append(head.split(b" ")[1])
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def test_flip_pairs_each_comparison_with_a_no_rule_phase_in_alternating_order() -> None:
    rules_set: list[str | None] = []
    rule_a, rule_b = {"id": "a"}, {"id": "b"}

    def set_rule(rule: dict | None) -> None:
        rules_set.append(None if rule is None else rule["id"])

    async def scenario() -> dict[str, list[tuple[Phase, Phase]]]:
        server = await asyncio.start_server(_answer_everything, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await flip(
                port, os.getpid(), "/v1/models/dnn:predict",
                {"control": Comparison(), "a": Comparison(rule_a), "b": Comparison(rule_b)},
                set_rule,
                pairs=2, phase_seconds=0.05, settle_seconds=0.01, warmup_seconds=0.05,
            )
        finally:
            server.close()

    result = asyncio.run(scenario())
    assert {name: len(pairs) for name, pairs in result.items()} == {"control": 2, "a": 2, "b": 2}
    # first round: no rule then the comparison; second round: the comparison first (ABBA)
    assert rules_set == [None, None, None, "a", None, "b",
                         None, None, "a", None, "b", None, None]
    for pairs in result.values():
        for no_rule, compared in pairs:
            assert no_rule.throughput > 0 and compared.throughput > 0


def test_a_client_side_comparison_moves_the_connections_to_its_paths_and_back() -> None:
    """Connection i posts to connection_paths[i] in the comparison's phases (no rule), and to
    the model URL again in the no-rule phases."""
    rules_set: list[dict | None] = []
    phase_paths: list[set[bytes]] = []
    seen: list[bytes] = []
    model_url = b"/v1/models/dnn:predict"
    versions = ("/v1/models/dnn/versions/1:predict", "/v1/models/dnn/versions/2:predict")

    async def scenario() -> None:
        server = await asyncio.start_server(
            lambda r, w: _answer_everything(r, w, seen), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]

        def set_rule(rule: dict | None) -> None:
            rules_set.append(rule)
            if seen:  # what the previous phase's requests addressed
                phase_paths.append(set(seen[len(seen) // 2 :]))
            seen.clear()

        try:
            await flip(
                port, os.getpid(), model_url.decode(),
                {"clients": Comparison(connection_paths=versions * 32)}, set_rule,
                pairs=2, phase_seconds=0.1, settle_seconds=0.05, warmup_seconds=0.05,
            )
        finally:
            server.close()

    asyncio.run(scenario())
    assert rules_set == [None] * 5  # a client-side comparison sets no rule
    # phases: none, clients, clients, none (ABBA); the warmup's requests precede them
    assert phase_paths[1:] == [
        {model_url}, {v.encode() for v in versions}, {v.encode() for v in versions}, {model_url}
    ]


def test_median_with_interval_uses_the_binomial_order_statistics() -> None:
    middle, low, high = median_with_interval([float(v) for v in range(1, 101)])
    assert middle == 50.5
    # n=100: ranks 50 -/+ 9.8 -> the 41st and 60th values
    assert (low, high) == (41.0, 60.0)
    with pytest.raises(ValueError):
        median_with_interval([])


def test_render_states_each_comparison_against_no_rule() -> None:
    same = Phase(1000.0, 100.0, 120.0)
    dearer = Phase(980.0, 102.0, 122.0)
    text = "\n".join(render({"A/A": [(same, same)] * 6, "rule": [(same, dearer)] * 6}, 1.0))
    assert "| A/A | 1.000x (1.000-1.000) | 1.000x (1.000-1.000) | 1.000x (1.000-1.000) |" in text
    assert "| rule | 0.980x (0.980-0.980) | 1.020x (1.020-1.020) | 1.017x (1.017-1.017) |" in text
    assert ratios([(same, dearer)], "gateway_cpu_us") == [1.02]


def test_settle_outlasts_adaptive_batchings_memory_of_the_clients_a_switch_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Switching from no rule to a keyed split moves 27 of 64 clients to the other version:
    until the latest version's queue forgets its peak of 64, its 37 clients' batches are cut
    at 32. The flip must measure only after that (a 0.3 s settle measured the transient)."""
    now = [100.0]
    monkeypatch.setattr(adaptive_batching.time, "monotonic", lambda: now[0])
    meter = GatewayCpuMeter()
    meter.seconds_per_row = 0.001  # the gateway is the bottleneck: the rule may cut
    latest, other = AdaptiveCap(meter), AdaptiveCap(meter)
    for cap in (latest, other):
        cap.batch_done(32, 0.0001, 32)
    latest.outstanding(64)  # no rule: every client on the latest version
    switched_at = now[0]
    uncut_at = None
    while now[0] - switched_at <= 3.0:
        now[0] += 0.01
        latest.outstanding(37)
        other.outstanding(27)
        others = other.recent_peak()
        if latest.limit(256, (), others) == 256 and uncut_at is None:
            uncut_at = now[0] - switched_at
        elif latest.limit(256, (), others) != 256:
            uncut_at = None
    assert uncut_at is not None and uncut_at > 0.3  # the transient the old settle measured
    assert uncut_at <= SETTLE_SECONDS, uncut_at


def test_render_says_how_long_after_a_switch_phases_are_measured() -> None:
    same = Phase(1000.0, 100.0, 120.0)
    text = "\n".join(render({"A/A": [(same, same)] * 6}, 1.0, 1.2))
    assert "each 1 s phase is measured 1.2 s after the rule" in text


def test_rank_sum_p_matches_the_normal_approximation() -> None:
    # no overlap, n = 5 + 5: U = 0, z = 12.5 / sqrt(25 * 11 / 12) = 2.611
    assert rank_sum_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(0.00902, abs=1e-4)
    assert rank_sum_p([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(0.00902, abs=1e-4)
    assert rank_sum_p([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)  # ties take mid-ranks
    assert rank_sum_p([1, 3, 5, 7], [2, 4, 6, 8]) > 0.5


def test_render_tests_each_comparison_against_the_aa_control() -> None:
    same = Phase(1000.0, 100.0, 120.0)
    noise = [(same, Phase(1000.0 + d, 100.0, 120.0)) for d in (-6, -3, 0, 2, 4, 7)]
    dearer = [(same, Phase(950.0 + d, 100.0, 120.0)) for d in (-6, -3, 0, 2, 4, 7)]
    text = "\n".join(render({AA_CONTROL: noise, "rule": dearer}, 1.0))
    control_row = next(line for line in text.splitlines() if line.startswith(f"| {AA_CONTROL}"))
    rule_row = next(line for line in text.splitlines() if line.startswith("| rule"))
    assert control_row.endswith("| - | - |")
    # every rule phase below every control phase: U = 0 for 6 + 6, p = 0.0039; the gateway
    # CPU is the same in every phase of both rows (all ties: p = 1)
    assert rule_row.endswith("| 0.00 | 1.00 |")
    noisier = [(same, Phase(1000.0 - d, 100.0, 120.0)) for d in (-6, -3, 0, 2, 4, 7)]
    text = "\n".join(render({AA_CONTROL: noise, "rule": noisier}, 1.0))
    assert text.splitlines()[-1].endswith("| 0.58 | 1.00 |")  # the same spread, mirrored
    dearer_cpu = [(same, Phase(1000.0, 103.0 + d / 10, 120.0)) for d in (-6, -3, 0, 2, 4, 7)]
    text = "\n".join(render({AA_CONTROL: noise, "rule": dearer_cpu}, 1.0))
    assert text.splitlines()[-1].endswith("| 0.00 |")
