"""bench/docs.py: the large-request shares pair each repeat with the in-process limit
measured beside it (the host's speed drifts over a suite run)."""

from __future__ import annotations

from bench import report
from bench.docs import large_table
from bench.stats import LevelResult, SuiteResults
from bench.workloads import LARGE, LARGE_CONCURRENCY


def _level(target: str, protocol: str, requests_per_second: float, repeat: int) -> LevelResult:
    return LevelResult(
        target=target, workload=LARGE.name, protocol=protocol, concurrency=LARGE_CONCURRENCY,
        request_rate=0.0, rows_per_request=LARGE.rows, throughput=requests_per_second,
        p50_us=1.0, p90_us=1.0, p95_us=1.0, p99_us=1.0, avg_us=1.0, requests=100, errors={},
        stable=True, windows=3, extra={"repeat": repeat},
    )


def _limits(rows_per_second: dict[int, float], batch: int) -> list[dict]:
    return [{"model": LARGE.model, "batch_size": batch, "rows_per_second": value,
             "repeat": repeat} for repeat, value in rows_per_second.items()]


def test_large_shares_pair_each_repeat_with_its_own_limit() -> None:
    # The host halves its speed after the first repeat: the server and the limit both fall.
    levels = [_level("tfgate", "grpc", 1_600, 0), _level("tfgate", "grpc", 800, 1),
              _level("tfgate", "grpc", 820, 2)]
    results = SuiteResults(
        levels=levels,
        inprocess=_limits({0: 150_000.0}, LARGE.rows),  # the suite-start figure
        inprocess_large=(
            _limits({0: 120_000.0, 1: 64_000.0, 2: 60_000.0}, LARGE.rows)
            + _limits({0: 136_000.0, 2: 68_000.0}, LARGE.rows)  # before and after: mean
            + _limits({0: 256_000.0, 1: 128_000.0, 2: 128_000.0},
                      LARGE.rows * LARGE_CONCURRENCY)
        ),
    )
    lines, shares = large_table(results, report.medians(levels))
    # per repeat: 102.4k/128k = 80%, 51.2k/64k = 80%, 52.5k/64k = 82%
    assert round(shares[("tfgate", "grpc")], 3) == 0.8
    assert "64,000 rows/s at 64 rows" in lines[0]
    assert "| 80% | 40% |" in "\n".join(lines)


def test_runs_without_per_repeat_limits_use_the_suite_start_figure() -> None:
    levels = [_level("tfgate", "grpc", 1_000, 0)]
    results = SuiteResults(levels=levels, inprocess=_limits({0: 128_000.0}, LARGE.rows))
    lines, shares = large_table(results, report.medians(levels))
    assert shares[("tfgate", "grpc")] == 0.5
    assert "measured at the start" in lines[0]
