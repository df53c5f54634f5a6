"""A traffic rule switched on and off under one continuous load: the finest measure of what a
rule costs that this shared 2-core machine allows (bench/traffic_split.py runs it after its
side-by-side modes and puts it in the same section of docs/benchmarks.md).

The load never stops: 64 keep-alive connections post dnn 1-row REST requests to the model
URL, each connection with its own X-Tfgate-Routing-Key (one simulated user per connection).
Phases of `phase_seconds` alternate between no rule and a comparison's state, in alternating
order (ABBA), with `settle_seconds` after each change left out: longer than adaptive batching
remembers a queue's outstanding rows (SETTLE_SECONDS), because a switch from no rule to a
keyed split moves 27 of the 64 clients off the latest version's queue, and until that queue's
old peak of 64 is forgotten its 37 clients' batches are cut into 32 + 5 (with a 0.3 s
settle the keyed split read 0.93-0.95x of no rule, measuring that transient; with 1.2 s,
0.98x). A pair is one no-rule phase
and its neighbouring comparison phase; its ratios (throughput, gateway CPU per request,
server CPU per request) are what the change cost, measured seconds apart. Four
comparisons take turns: no rule against no rule (the method's own noise), a one-arm rule
(every request drawn, counted and remembered, all on one version), a 50/50 split keyed
per user (the A/B test of users; each version's queue keeps its own clients, so batches stay
whole), and, with no rule, the same users posting to the version URL their key hashes to
(the same split done by the clients: what serving two versions costs without the rule's
work). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import pathlib
import statistics
from collections.abc import Callable

from app.serving.adaptive_batching import PEAK_WINDOW_SECONDS
from bench.loadgen import HttpTarget, closed_loop
from bench.probes import precise_cpu_seconds, tree_precise_cpu_seconds
from bench.workloads import Workload

CONCURRENCY = 64
AA_CONTROL = "no rule, again (A/A control)"
FIELDS = ("throughput", "gateway_cpu_us", "server_cpu_us")
# tested against the A/A control: throughput, and the gateway's CPU (it bounds this workload)
TESTED_FIELDS = ("throughput", "gateway_cpu_us")
# Left out after each switch: adaptive batching keeps a queue's outstanding-row peak for up to
# two windows (serving/adaptive_batching.py), so batches take that long to follow a change in
# which clients feed which version's queue; a margin on top.
SETTLE_SECONDS = 2 * PEAK_WINDOW_SECONDS + 0.2


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What a comparison's phases change against no rule: the traffic rule in force, or,
    with `connection_paths` and no rule, where the clients post (connection i to
    connection_paths[i]: clients doing the split themselves, over version URLs)."""

    rule: dict | None = None
    connection_paths: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Phase:
    throughput: float  # requests per second
    gateway_cpu_us: float  # per request
    server_cpu_us: float  # per request, gateway and workers


async def _phase(
    recorder_cut: Callable[[], int], pid: int, seconds: float, settle_seconds: float
) -> Phase:
    await asyncio.sleep(settle_seconds)
    recorder_cut()
    loop = asyncio.get_running_loop()
    # CPU to the nanosecond: clock ticks (10 ms) are 1% of a 1 s phase of one busy core
    started, gateway, server = loop.time(), precise_cpu_seconds(pid), tree_precise_cpu_seconds(pid)
    await asyncio.sleep(seconds)
    done = recorder_cut()
    elapsed = loop.time() - started
    per_request = 1e6 / max(done, 1)
    return Phase(
        throughput=done / elapsed,
        gateway_cpu_us=(precise_cpu_seconds(pid) - gateway) * per_request,
        server_cpu_us=(tree_precise_cpu_seconds(pid) - server) * per_request,
    )


async def flip(
    port: int,
    pid: int,
    path: str,
    comparisons: dict[str, Comparison],
    set_rule: Callable[[dict | None], None],
    *,
    pairs: int,
    phase_seconds: float = 1.0,
    settle_seconds: float = SETTLE_SECONDS,
    warmup_seconds: float = 3.0,
) -> dict[str, list[tuple[Phase, Phase]]]:
    """Per comparison, `pairs` (no rule, comparison) phase pairs. `set_rule(None)` removes the
    rule; a no-rule phase has every connection post to `path`."""
    target = HttpTarget(
        "127.0.0.1", port, path, Workload("dnn").rest_body(),
        per_connection_header="X-Tfgate-Routing-Key",
    )
    names = list(comparisons)
    result: dict[str, list[tuple[Phase, Phase]]] = {name: [] for name in names}
    async with closed_loop(target, CONCURRENCY) as load:

        def cut() -> int:
            return len(load.recorder.cut().latencies_ns)

        await asyncio.sleep(warmup_seconds)  # batch sizes settle
        for index in range(pairs * len(names)):
            name = names[index % len(names)]
            measured: dict[bool, Phase] = {}
            with_change_first = (index // len(names)) % 2 == 1
            for changed in (with_change_first, not with_change_first):
                state = comparisons[name] if changed else Comparison()
                await asyncio.to_thread(set_rule, state.rule)
                load.post_to(state.connection_paths or (None,))
                measured[changed] = await _phase(cut, pid, phase_seconds, settle_seconds)
            result[name].append((measured[False], measured[True]))
        await asyncio.to_thread(set_rule, None)
    return result


def median_with_interval(values: list[float]) -> tuple[float, float, float]:
    """The median and its distribution-free 95% confidence interval (order statistics of a
    binomial(n, 1/2); n >= 6)."""
    ordered = sorted(values)
    n = len(ordered)
    half_width = 1.96 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half_width))
    high = min(n - 1, math.ceil(n / 2 + half_width) - 1)
    return statistics.median(ordered), ordered[low], ordered[high]


def rank_sum_p(first: list[float], second: list[float]) -> float:
    """Two-sided p-value of the Wilcoxon rank-sum (Mann-Whitney) test that the two samples
    come from one distribution: the normal approximation, mid-ranks for ties (no tie
    correction of the variance; with real-valued ratios ties are rare). Both need >= 1 value."""
    pooled = sorted([(v, 0) for v in first] + [(v, 1) for v in second])
    rank_sum_first = 0.0
    start = 0
    while start < len(pooled):
        end = start
        while end + 1 < len(pooled) and pooled[end + 1][0] == pooled[start][0]:
            end += 1
        mid_rank = (start + end) / 2 + 1
        rank_sum_first += mid_rank * sum(1 for _, group in pooled[start : end + 1] if group == 0)
        start = end + 1
    n1, n2 = len(first), len(second)
    u = rank_sum_first - n1 * (n1 + 1) / 2
    spread = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    if spread == 0:
        return 1.0
    return math.erfc(abs(u - n1 * n2 / 2) / spread / math.sqrt(2))


def ratios(pairs: list[tuple[Phase, Phase]], field: str) -> list[float]:
    return [getattr(b, field) / getattr(a, field) for a, b in pairs if getattr(a, field) > 0]


def render(
    result: dict[str, list[tuple[Phase, Phase]]],
    phase_seconds: float,
    settle_seconds: float = SETTLE_SECONDS,
) -> list[str]:
    pairs = min(len(v) for v in result.values())
    lines = [
        f"### The same, under one continuous load ({pairs} pairs per comparison)",
        "",
        "The load never stops (c=64, each connection with its own routing key, to the model",
        f"URL); each {phase_seconds:g} s phase is measured {settle_seconds:g} s after the rule",
        "was switched (adaptive batching's memory of the old batch sizes runs out first),",
        "no-rule and rule phases paired in alternating order, the comparisons taking turns.",
        "CPU is read from the kernel's CPU-time clock of each process (nanoseconds, every",
        "thread), not from clock ticks (10 ms, 1% of a phase). Each cell: the median of the",
        "per-pair ratios (rule phase / its no-rule neighbour), with the median's 95%",
        "confidence interval. The A/A row (no rule in both phases) is",
        "the method's own noise; the last two columns are the rank-sum tests of each row's",
        "throughput and gateway CPU ratios against the A/A row's (a small p: the phases differ",
        "from the noise).",
        "",
        "| against no rule | throughput | gateway CPU per request | server CPU per request |"
        " throughput vs A/A: p | gateway CPU vs A/A: p |",
        "|---|---|---|---|---|---|",
    ]
    for name, measured in result.items():
        cells = []
        for field in FIELDS:
            middle, low, high = median_with_interval(ratios(measured, field))
            cells.append(f"{middle:.3f}x ({low:.3f}-{high:.3f})")
        for field in TESTED_FIELDS:
            if name == AA_CONTROL or AA_CONTROL not in result:
                cells.append("-")
            else:
                control = ratios(result[AA_CONTROL], field)
                cells.append(f"{rank_sum_p(control, ratios(measured, field)):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Render a saved run (bench/results/traffic_flip.json) again."""
    parser = argparse.ArgumentParser(prog="python -m bench.traffic_flip", description=__doc__)
    parser.add_argument("results", nargs="?", default="bench/results/traffic_flip.json")
    parser.add_argument("--phase-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    saved = json.loads(pathlib.Path(args.results).read_text())
    result = {
        name: [(Phase(**a), Phase(**b)) for a, b in pairs] for name, pairs in saved.items()
    }
    print("\n".join(render(result, args.phase_seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
