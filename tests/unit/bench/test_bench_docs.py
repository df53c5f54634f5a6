"""bench/docs.py: the large-request shares pair each repeat with the in-process limit
measured beside it (the host's speed drifts over a suite run); bench/suite.py's plots are
drawn from the run the tables show, also on a re-render, and missing matplotlib is said."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from bench import report, suite
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


def _one_row_level(workload: str) -> LevelResult:
    return dataclasses.replace(
        _level("tfgate", "rest", 1_000, 0), workload=workload, concurrency=64,
        rows_per_request=1,
    )


def _fake_plotter(drawn: list[str]):
    def plot(table, model, inprocess, path: pathlib.Path) -> bool:
        drawn.append(model)
        path.write_bytes(f"{model}: {len(table)} medians".encode())
        return True
    return plot


def test_a_rerender_draws_the_plots_again_from_the_saved_run(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = SuiteResults(levels=[_one_row_level("dnn"), _one_row_level("tiny")])
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(dataclasses.asdict(results)))
    docs_path = tmp_path / "docs" / "benchmarks.md"
    (docs_path.parent / "benchmarks").mkdir(parents=True)
    stale = docs_path.parent / "benchmarks" / "cnn.png"  # from an older run: not shown
    stale.write_bytes(b"old")
    drawn: list[str] = []
    monkeypatch.setattr(report, "plot_workload", _fake_plotter(drawn))
    suite.rerender_docs(out, docs_path)
    assert drawn == ["tiny", "dnn"]  # the 1-row workloads of this run, in suite order
    text = docs_path.read_text()
    assert "benchmarks/tiny.png" in text and "benchmarks/dnn.png" in text
    assert "benchmarks/cnn.png" not in text
    assert (out / "dnn.png").read_bytes() == b"dnn: 2 medians"


def test_without_matplotlib_the_plots_are_left_out_and_that_is_said(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(report, "plot_workload", lambda *args: False)
    levels = [_one_row_level("dnn")]
    plots = suite.draw_plots(
        SuiteResults(levels=levels), report.medians(levels), ("dnn",), tmp_path / "docs",
        tmp_path,
    )
    assert plots == {}
    assert "matplotlib is not installed" in capsys.readouterr().err
