"""Issues 3 and 21's performance targets, each checked against one suite run (met / missed).

Data path position: report only. Every check names the numbers it compared, so a missed
target says by how much.
"""

from __future__ import annotations

import math

from bench.report import Key, Median, inprocess_by_size, ratio, throughput
from bench.servers import ALT, grpc_transports
from bench.stats import LevelResult, SuiteResults
from bench.workloads import LARGE, LARGE_CONCURRENCY

REST, GRPC = ("tfgate", "rest"), ("tfgate", "grpc")
STOCK = ("stock", "rest")  # tfgate with bench/batching_stock.pbtxt and no TOML
NAIVE, BENTO, CONSTANT = ("naive", "rest"), ("bentoml", "rest"), ("constant", "rest")


def _p99(r: LevelResult) -> float:
    return r.p99_us


def _row(name: str, measured: str, ok: bool | None) -> str:
    verdict = "n/a" if ok is None else ("met" if ok else "**missed**")
    return f"| {name} | {measured} | {verdict} |"


def _check(value: float, ok: bool) -> bool | None:
    return None if math.isnan(value) else ok


def evaluate(results: SuiteResults, table: dict[Key, Median], large: dict) -> list[str]:
    lv = results.levels
    lines = ["| target | measured (medians; ratios per repeat, then median) | |",
             "|---|---|---|"]
    dnn = ratio(lv, REST, NAIVE, "dnn", 64, throughput)
    dnn_p99 = ratio(lv, REST, NAIVE, "dnn", 64, _p99)
    lines.append(_row("dnn c=64: >= 2.5x naive throughput", f"{dnn:.2f}x",
                      _check(dnn, dnn >= 2.5)))
    lines.append(_row("dnn c=64: p99 <= 0.5x naive", f"{dnn_p99:.2f}x",
                      _check(dnn_p99, dnn_p99 <= 0.5)))
    cnn = ratio(lv, REST, NAIVE, "cnn", 64, throughput)
    lines.append(_row("cnn c=64: >= 4x naive throughput", f"{cnn:.2f}x", _check(cnn, cnn >= 4)))
    lines.extend(_stock_rows(lv))
    tiny = ratio(lv, REST, CONSTANT, "tiny", 64, throughput)
    lines.append(_row("tiny c=64: >= 90% of constant-reply ceiling", f"{tiny:.0%}",
                      _check(tiny, tiny >= 0.9)))
    lines.append(_bentoml_row(lv, table))
    cpu = table.get((*REST, "dnn", 64))
    cpu_us = cpu.values["gateway_cpu_us_per_request"] if cpu else math.nan
    lines.append(_row("gateway CPU per request (dnn, 1 row, REST c=64) < 300 us",
                      f"{cpu_us:.0f} us", _check(cpu_us, cpu_us < 300)))
    batch = cpu.values["batch_size_mean"] if cpu else math.nan
    grpc = table.get((*GRPC, "dnn", 64))
    grpc_batch = grpc.values["batch_size_mean"] if grpc else math.nan
    lines.append(_row("mean executed batch at c=64 (dnn) >= 16",
                      f"REST {batch:.1f}, gRPC {grpc_batch:.1f}", _check(batch, batch >= 16)))
    g, r = large.get(GRPC, math.nan), large.get(REST, math.nan)
    lines.append(_row("large requests gRPC >= 70% of in-process (64 rows)", f"{g:.0%}",
                      _check(g, g >= 0.7)))
    lines.append(_row("large requests REST >= 35% of in-process (64 rows)", f"{r:.0%}",
                      _check(r, r >= 0.35)))
    lines.extend(_transport_rows(results))
    ipc = results.ipc.get("ipc_ms_median", math.nan)
    lines.append(_row("4 MB tensor IPC gateway -> worker -> gateway < 2 ms", f"{ipc:.2f} ms",
                      _check(ipc, ipc < 2)))
    return lines


def _gateway_cpu(r: LevelResult) -> float:
    return r.gateway_cpu_us_per_request


def _transport_rows(results: SuiteResults) -> list[str]:
    """Issue 21 item 4 (1-row gRPC costs the gateway no more CPU per call than REST per
    request, on the default transport) and issue 19's condition for h2 as the default (ahead
    of grpc.aio side by side, 1 row and large)."""
    lv = results.levels
    main, _ = grpc_transports(results.tfgate_args)
    cpu = ratio(lv, GRPC, REST, "dnn", 64, _gateway_cpu)
    rows = [_row(f"1-row gRPC ({main}) gateway CPU per call <= REST's per request (dnn c=64)",
                 f"{cpu:.2f}x REST's", _check(cpu, cpu <= 1.0))]
    h2, aio = (GRPC, ALT) if main == "h2" else (ALT, GRPC)
    one = ratio(lv, h2, aio, "dnn", 64, throughput)
    large = ratio(lv, h2, aio, LARGE.name, LARGE_CONCURRENCY, throughput)
    rows.append(_row("gRPC: h2 transport ahead of grpc.aio (dnn 1 row c=64; large)",
                     f"{one:.2f}x; {large:.2f}x",
                     _check(one + large, one > 1.0 and large > 1.0)))
    return rows


def _stock_rows(lv: list[LevelResult]) -> list[str]:
    """cnn and dnn at c=64 on the stock batching file, 4-decimal and 6g bodies alike."""
    rows = []
    for model in ("cnn", "dnn"):
        for number_format in ("4f", "6g"):
            workload = model if number_format == "6g" else f"{model}@{number_format}"
            speed = ratio(lv, STOCK, NAIVE, workload, 64, throughput)
            p99 = ratio(lv, STOCK, NAIVE, workload, 64, _p99)
            rows.append(_row(
                f"{model} c=64, stock config, {number_format} bodies: >= 4x naive, "
                "p99 <= 0.5x naive",
                f"{speed:.2f}x, p99 {p99:.2f}x",
                _check(speed + p99, speed >= 4 and p99 <= 0.5),
            ))
    return rows


def _bentoml_row(lv: list[LevelResult], table: dict[Key, Median]) -> str:
    cells = [(k[2], k[3]) for k in table if k[:2] == BENTO]
    if not cells:
        return _row("ahead of BentoML on every workload and concurrency", "BentoML not run", None)
    behind = []
    worst = math.inf
    for workload, c in sorted(cells):
        value = ratio(lv, REST, BENTO, workload, c, throughput)
        if not math.isnan(value):
            worst = min(worst, value)
            if value <= 1:
                behind.append(f"{workload} c={c} ({value:.2f}x)")
    measured = f"lowest tfgate/BentoML {worst:.2f}x" + (
        f"; behind at {', '.join(behind)}" if behind else "")
    return _row("ahead of BentoML on every workload and concurrency", measured, not behind)


def inprocess_limit(results: SuiteResults, model: str, batch: int) -> float:
    return inprocess_by_size(results, model).get(batch, math.nan)
