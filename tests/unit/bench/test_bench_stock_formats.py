"""bench/suite.py, docs.py, targets.py: the stock-config column and the number formats (issue 21)
are planned at c=64, rendered beside the tuned server, and checked against their targets."""

from __future__ import annotations

import pathlib

from bench import report, suite
from bench.docs import stock_table
from bench.stats import LevelResult, SuiteResults
from bench.targets import evaluate
from bench.workloads import NUMBER_FORMATS, Workload

NAMES = ["tfgate", "stock", "naive", "constant", "bentoml"]


def _level(target: str, workload: str, throughput: float, p99_us: float) -> LevelResult:
    return LevelResult(
        target=target, workload=workload, protocol="rest", concurrency=64, request_rate=0.0,
        rows_per_request=1, throughput=throughput, p50_us=1.0, p90_us=1.0, p95_us=1.0,
        p99_us=p99_us, avg_us=1.0, requests=100, errors={}, stable=True, windows=3,
        extra={"repeat": 0},
    )


def test_plan_has_stock_and_formats_at_c64_only() -> None:
    options = suite.quick_options(pathlib.Path("/nonexistent"), None)
    plan = suite.plan_levels(options, NAMES)
    stock = [(w.name, c) for _, w, c, name, _ in plan if name == "stock"]
    assert {c for _, c in stock} == {64}
    assert {n for n, _ in stock} == {"tiny", "dnn", "cnn", "tiny@4f", "dnn@4f", "cnn@4f"}
    formatted = {(w.name, name) for _, w, c, name, _ in plan if "@" in w.name}
    assert formatted == {(f"{m}@4f", s) for m in ("tiny", "dnn", "cnn")
                         for s in ("tfgate", "stock", "naive")}
    assert all(c >= 64 for _, w, c, name, _ in plan if name == "constant" and w.rows == 1)
    # the tuned server still covers every concurrency
    assert {c for _, w, c, name, p in plan if (name, p, w.name) == ("tfgate", "rest", "cnn")} \
        == {1, 64}


def test_number_formats_print_the_same_values_differently() -> None:
    bodies = {f: Workload("cnn", number_format=f).rest_body() for f in NUMBER_FORMATS}
    assert len(set(bodies.values())) == len(NUMBER_FORMATS)
    assert Workload("cnn").name == "cnn" and Workload("cnn", number_format="4f").name == "cnn@4f"
    assert len(bodies["4f"]) < 8 * 1024 < len(bodies["6g"])  # the 7 KB vs 8.7 KB


def test_stock_rows_render_and_check_the_targets() -> None:
    levels = []
    for workload in ("cnn", "cnn@4f", "dnn", "dnn@4f"):
        levels += [_level("naive", workload, 500, 100_000), _level("tfgate", workload, 3000, 9_000)]
    levels += [_level("stock", "cnn", 2500, 20_000), _level("stock", "cnn@4f", 1500, 80_000),
               _level("stock", "dnn", 2100, 40_000), _level("stock", "dnn@4f", 2400, 30_000)]
    results = SuiteResults(levels=levels)
    table = report.medians(levels)
    text = "\n".join(stock_table(results, table))
    assert "| cnn, 4f |" in text and "| 3.00x | 0.80x |" in text  # 1500/500, p99 80k/100k
    targets = "\n".join(evaluate(results, table, {}))
    assert "| cnn c=64, stock config, 6g bodies: >= 4x naive, p99 <= 0.5x naive | 5.00x, p99 " \
        "0.20x | met |" in targets
    assert "| cnn c=64, stock config, 4f bodies: >= 4x naive, p99 <= 0.5x naive | 3.00x, p99 " \
        "0.80x | **missed** |" in targets
    assert "dnn c=64, stock config, 6g bodies" in targets and "4.20x, p99 0.40x | met" in targets
