"""bench/suite.py, docs.py, targets.py: both gRPC transports side by side. The suite runs the
tuned tfgate a second time on the transport the main one does not use ("alt"), measures its
gRPC at c=64 and on the large workload right after the main one's, renders the two beside each
other, and checks issue 21 item 4 (gRPC's gateway CPU per call against REST's) and issue 19's
condition for h2 as the default (ahead of grpc.aio)."""

from __future__ import annotations

import pathlib

from bench import report, servers, suite
from bench.docs import transport_table
from bench.stats import LevelResult, SuiteResults
from bench.targets import evaluate
from bench.workloads import LARGE, LARGE_CONCURRENCY

NAMES = ["tfgate", "stock", suite.ALT_GRPC, "naive", "constant"]


def _level(target: str, protocol: str, workload: str, throughput: float, cpu_us: float,
           concurrency: int = 64, repeat: int = 0) -> LevelResult:
    result = LevelResult(
        target=target, workload=workload, protocol=protocol, concurrency=concurrency,
        request_rate=0.0, rows_per_request=1, throughput=throughput, p50_us=1.0, p90_us=1.0,
        p95_us=1.0, p99_us=2_000.0, avg_us=1.0, requests=100, errors={}, stable=True,
        windows=3, extra={"repeat": repeat},
    )
    result.gateway_cpu_us_per_request = cpu_us
    result.batch_size_mean = 8.0
    return result


def test_the_other_transport_follows_the_flag() -> None:
    assert servers.grpc_transports([]) == (servers.DEFAULT_TRANSPORT, "grpcio"
                                          if servers.DEFAULT_TRANSPORT == "h2" else "h2")
    assert servers.grpc_transports(["--grpc_implementation=grpcio"]) == ("grpcio", "h2")
    # the last flag wins, as on tfgate's command line
    assert servers.grpc_transports(
        ["--grpc_implementation=grpcio", "--grpc_implementation=h2"]
    ) == ("h2", "grpcio")


def test_alt_runs_the_tuned_files_on_the_other_transport(tmp_path: pathlib.Path) -> None:
    (tmp_path / "dnn" / "1").mkdir(parents=True)
    options = suite.quick_options(tmp_path, None, tfgate_args=("--grpc_implementation=grpcio",))
    specs = {s.name: s for s in suite.server_specs(options, tmp_path, tmp_path)}
    alt, main = specs[suite.ALT_GRPC].argv, specs["tfgate"].argv
    assert alt[-1] == "--grpc_implementation=h2"
    assert f"--config={suite.CONFIG_FILE}" in alt and f"--config={suite.CONFIG_FILE}" in main
    assert [a for a in alt if "batching_parameters_file" in a] == \
        [a for a in main if "batching_parameters_file" in a]


def test_alt_is_measured_over_grpc_only_at_c64_and_large_right_after_the_main_one() -> None:
    options = suite.quick_options(pathlib.Path("/nonexistent"), None)
    plan = suite.plan_levels(options, NAMES)
    alt = [(w.name, c, p) for _, w, c, name, p in plan if name == suite.ALT_GRPC]
    assert {p for _, _, p in alt} == {"grpc"}
    assert {(n, c) for n, c, _ in alt} == {("tiny", 64), ("dnn", 64), ("cnn", 64),
                                           (LARGE.name, LARGE_CONCURRENCY)}
    steps = [(w.name, c, name, p) for _, w, c, name, p in plan]
    for name, c, _ in alt:  # back to back with the main transport's level
        at = steps.index((name, c, suite.ALT_GRPC, "grpc"))
        assert steps[at - 1] == (name, c, "tfgate", "grpc")


def _results(args: tuple[str, ...]) -> tuple[SuiteResults, dict]:
    levels = []
    for repeat in (0, 1, 2):
        levels += [
            _level("tfgate", "rest", "dnn", 5000, 150, repeat=repeat),
            _level("tfgate", "grpc", "dnn", 4000, 120 + repeat, repeat=repeat),
            _level("alt", "grpc", "dnn", 2000, 400, repeat=repeat),
            _level("tfgate", "grpc", LARGE.name, 1800, 300, LARGE_CONCURRENCY, repeat),
            _level("alt", "grpc", LARGE.name, 1200, 700, LARGE_CONCURRENCY, repeat),
        ]
    results = SuiteResults(levels=levels)
    results.tfgate_args = list(args)
    return results, report.medians(levels)


def test_the_transports_are_rendered_side_by_side() -> None:
    results, table = _results(("--grpc_implementation=h2",))
    text = "\n".join(transport_table(results, table))
    assert "| h2 req/s | grpcio req/s | h2/grpcio |" in text
    assert "| dnn | 64 | 4,000 | 2,000 | 2.00x | 2.0 / 2.0 | 121 / 400 | 150 | 8.0 / 8.0 |" \
        in text
    assert f"| {LARGE.name} | {LARGE_CONCURRENCY} | 1,800 | 1,200 | 1.50x |" in text


def test_targets_check_grpc_cpu_against_rest_and_h2_against_grpc_aio() -> None:
    results, table = _results(("--grpc_implementation=h2",))
    targets = "\n".join(evaluate(results, table, {}))
    assert "| 1-row gRPC (h2) gateway CPU per call <= REST's per request (dnn c=64) | " \
        "0.81x REST's | met |" in targets
    assert "| gRPC: h2 transport ahead of grpc.aio (dnn 1 row c=64; large) | 2.00x; 1.50x " \
        "| met |" in targets
    # the same figures read with grpc.aio as the main transport: alt is h2, now behind
    results, table = _results(("--grpc_implementation=grpcio",))
    targets = "\n".join(evaluate(results, table, {}))
    assert "| gRPC: h2 transport ahead of grpc.aio (dnn 1 row c=64; large) | 0.50x; 0.67x " \
        "| **missed** |" in targets
    assert "| 1-row gRPC (grpcio) gateway CPU per call" in targets
