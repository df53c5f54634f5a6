"""bench/traffic_flip.py: phases in alternating order around each rule change, every pair a
no-rule phase and its comparison's phase; the median's confidence interval."""

from __future__ import annotations

import asyncio
import os

import pytest

from bench.traffic_flip import Phase, flip, median_with_interval, ratios, render

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


async def _answer_everything(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
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
                {"control": None, "a": rule_a, "b": rule_b}, set_rule,
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
