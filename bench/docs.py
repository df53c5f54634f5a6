"""Render docs/benchmarks.md from one suite run: tables, ratios, targets, plots, machine.

Data path position: the last step of `tfgate bench suite`. Ratios are computed per repeat
(both numbers from the same minutes of the same run) and then the median is taken; the
hand-written analysis in bench/analysis.md (profiles, where the time goes) is appended.
"""

from __future__ import annotations

import math
import os
import pathlib
import statistics
from collections.abc import Sequence

from app.settings.flags import FLAGS
from bench.report import Key, Median, by_repeat, inprocess_by_size, ratio, throughput
from bench.servers import ALT, grpc_transports
from bench.stats import SuiteResults
from bench.targets import evaluate
from bench.workloads import (
    DEFAULT_FORMAT,
    EXTRA_FORMATS,
    FORMAT_CONCURRENCY,
    LARGE,
    LARGE_CONCURRENCY,
    Workload,
)

ANALYSIS = pathlib.Path(__file__).resolve().parent / "analysis.md"
FLAG_DEFAULTS = {flag.name: flag.default for flag in FLAGS}
# Sections written by separate benchmark runs (kept when regenerating), in this order:
# bench/protocols.py (REST vs gRPC), bench/v2_protocol.py (V2 beside TF Serving's API),
# bench/cache_bench.py (cache), bench/hotswap.py, bench/traffic_split.py (traffic rule cost).
SECTIONS = [
    pathlib.Path(__file__).resolve().parent / name
    for name in (
        "protocols_section.md", "v2_protocol_section.md", "cache_section.md", "hotswap_section.md",
        "traffic_section.md",
    )
]
SERVERS = [("tfgate", "rest"), ("tfgate", "grpc"), ("naive", "rest"), ("bentoml", "rest"),
           ("constant", "rest"), ("constant", "grpc")]
LABELS = {("tfgate", "rest"): "tfgate REST", ("tfgate", "grpc"): "tfgate gRPC",
          ("naive", "rest"): "naive", ("bentoml", "rest"): "BentoML",
          ("constant", "rest"): "constant REST", ("constant", "grpc"): "constant gRPC",
          ("stock", "rest"): "tfgate stock config", ALT: "tfgate gRPC, alt transport"}




TRANSPORTS = {
    "grpcio": "grpc.aio (`--grpc_implementation=grpcio`)",
    "h2": "tfgate's own HTTP/2 server (`--grpc_implementation=h2`)",
}


def grpc_transport(tfgate_args: Sequence[str]) -> str:
    """Which gRPC server tfgate ran with, and which one `alt` ran for the side by side."""
    main, other = grpc_transports(tfgate_args)
    described = TRANSPORTS.get(main, f"`--grpc_implementation={main}`")
    if main == FLAG_DEFAULTS["grpc_implementation"]:
        described += ", the default"
    return f"{described}; `alt` is the same tuned tfgate on {TRANSPORTS.get(other, other)}"


def large_limits(results: SuiteResults, model: str, batch: int) -> dict[int, float]:
    """Repeat -> the in-process limit around that repeat's large levels (the mean of the
    measurements just before and just after them)."""
    by_repeat: dict[int, list[float]] = {}
    for r in results.inprocess_large:
        if r["model"] == model and r["batch_size"] == batch:
            by_repeat.setdefault(int(r["repeat"]), []).append(r["rows_per_second"])
    return {repeat: statistics.mean(values) for repeat, values in by_repeat.items()}


def _per_repeat_share(results: SuiteResults, server: tuple[str, str], batch: int,
                      fallback: float) -> float:
    """Median over repeats of the server's large-workload rows/s over the in-process limit
    of the same repeat (the suite-start limit for runs that did not measure one)."""
    limits = large_limits(results, LARGE.model, batch)
    levels = by_repeat(results.levels, *server, LARGE.name, LARGE_CONCURRENCY)
    values = [r.throughput * r.rows_per_request / limits.get(k, fallback)
              for k, r in levels.items() if limits.get(k, fallback) > 0]
    return statistics.median(values) if values else math.nan


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _x(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def workload_table(results: SuiteResults, table: dict[Key, Median], model: str,
                   concurrencies: list[int]) -> list[str]:
    inproc = inprocess_by_size(results, model)
    lines = [
        "| c | tfgate REST | tfgate gRPC | naive | BentoML | constant REST | constant gRPC "
        "| REST/naive | REST/BentoML | REST/constant REST | gRPC/constant gRPC "
        "| in-process (batch=c) | p99 ms REST / gRPC / naive / BentoML | mean batch "
        "| gateway CPU us/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lv = results.levels
    for c in concurrencies:
        cells = [str(c)]
        for server in SERVERS:
            m = table.get((*server, model, c))
            cells.append(_fmt(m.throughput) if m else "-")
        for other in (("naive", "rest"), ("bentoml", "rest"), ("constant", "rest")):
            cells.append(_x(ratio(lv, ("tfgate", "rest"), other, model, c, throughput)))
        cells.append(_x(ratio(lv, ("tfgate", "grpc"), ("constant", "grpc"), model, c,
                              throughput)))
        cells.append(_fmt(inproc.get(c, math.nan)))
        p99s = []
        for server in SERVERS[:4]:
            m = table.get((*server, model, c))
            p99s.append(_fmt(m.p99_us / 1e3, 1) if m else "-")
        cells.append(" / ".join(p99s))
        rest = table.get(("tfgate", "rest", model, c))
        cells.append(_fmt(rest.values["batch_size_mean"], 1) if rest else "-")
        cells.append(_fmt(rest.values["gateway_cpu_us_per_request"]) if rest else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def stock_table(results: SuiteResults, table: dict[Key, Median]) -> list[str]:
    """Tuned and stock-config tfgate against naive at one concurrency, per number format."""
    c = FORMAT_CONCURRENCY
    lv = results.levels
    tuned, stock, naive = ("tfgate", "rest"), ("stock", "rest"), ("naive", "rest")
    lines = [
        f"| workload (c={c}) | body bytes | tfgate tuned | tfgate stock | naive | tuned/naive "
        "| stock/naive | stock p99 / naive p99 | stock mean batch | stock gateway CPU us/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    models = sorted({k[2].split("@")[0] for k in table if k[0] == "stock"},
                    key=lambda m: ("tiny", "dnn", "cnn").index(m)
                    if m in ("tiny", "dnn", "cnn") else 9)
    for model in models:
        for number_format in (DEFAULT_FORMAT, *EXTRA_FORMATS):
            workload = Workload(model, number_format=number_format)
            name = workload.name
            cells = [f"{model}, {number_format}", f"{len(workload.rest_body()):,}"]
            for server in (tuned, stock, naive):
                m = table.get((*server, name, c))
                cells.append(_fmt(m.throughput) if m else "-")
            cells.append(_x(ratio(lv, tuned, naive, name, c, throughput)))
            cells.append(_x(ratio(lv, stock, naive, name, c, throughput)))
            cells.append(_x(ratio(lv, stock, naive, name, c, lambda r: r.p99_us)))
            m = table.get((*stock, name, c))
            cells.append(_fmt(m.values["batch_size_mean"], 1) if m else "-")
            cells.append(_fmt(m.values["gateway_cpu_us_per_request"]) if m else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def transport_table(results: SuiteResults, table: dict[Key, Median]) -> list[str]:
    """tfgate's gRPC on both transports at FORMAT_CONCURRENCY (1 row) and on the large
    workload, with REST's gateway CPU beside them (issue 21 item 4: gRPC's per call must not
    exceed REST's per request)."""
    main, other = grpc_transports(results.tfgate_args)
    lv = results.levels
    lines = [
        f"| workload | c | {main} req/s | {other} req/s | {main}/{other} | p99 ms {main} / "
        f"{other} | gateway CPU us/call {main} / {other} | REST gateway CPU us/req "
        f"| mean batch {main} / {other} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    models = sorted({k[2] for k in table if k[:2] == ALT and k[2] != LARGE.name},
                    key=lambda m: ("tiny", "dnn", "cnn").index(m)
                    if m in ("tiny", "dnn", "cnn") else 9)
    rows = [(m, FORMAT_CONCURRENCY) for m in models]
    if (*ALT, LARGE.name, LARGE_CONCURRENCY) in table:
        rows.append((LARGE.name, LARGE_CONCURRENCY))
    for name, c in rows:
        ours, alt = table.get(("tfgate", "grpc", name, c)), table.get((*ALT, name, c))
        rest = table.get(("tfgate", "rest", name, c))
        both = [m for m in (ours, alt) if m is not None]
        if len(both) < 2:
            continue
        cells = [name, str(c), _fmt(ours.throughput), _fmt(alt.throughput),
                 _x(ratio(lv, ("tfgate", "grpc"), ALT, name, c, throughput)),
                 " / ".join(_fmt(m.p99_us / 1e3, 1) for m in both),
                 " / ".join(_fmt(m.values["gateway_cpu_us_per_request"]) for m in both),
                 _fmt(rest.values["gateway_cpu_us_per_request"]) if rest else "-",
                 " / ".join(_fmt(m.values["batch_size_mean"], 1) for m in both)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def large_table(results: SuiteResults, table: dict[Key, Median]) -> tuple[list[str], dict]:
    inproc = inprocess_by_size(results, LARGE.model)
    size_max = LARGE.rows * LARGE_CONCURRENCY
    limit = inproc.get(LARGE.rows, math.nan)
    limit_max = inproc.get(size_max, math.nan)
    beside = large_limits(results, LARGE.model, LARGE.rows)
    beside_max = large_limits(results, LARGE.model, size_max)
    if beside:
        where = "median over repeats of the limits measured just before and after each " \
            "repeat's large runs"
        limit = statistics.median(beside.values())
        limit_max = statistics.median(beside_max.values()) if beside_max else limit_max
    else:
        where = "measured at the start"
    lines = [
        f"In-process limits: {_fmt(limit)} rows/s at {LARGE.rows} rows and {_fmt(limit_max)} at"
        f" {size_max} ({where}). Each share below pairs a repeat's rows/s with the limit of the"
        " same repeat, then takes the median.",
        "",
        f"| server | rows/s | requests/s | p99 ms | mean batch | vs in-process at {LARGE.rows}"
        f" rows | vs in-process at {size_max} rows | CPU us/request: front process / all server "
        "processes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = {}
    for server in (("tfgate", "grpc"), ALT, ("constant", "grpc"), ("tfgate", "rest"),
                   ("constant", "rest"), ("naive", "rest")):
        m = table.get((*server, LARGE.name, LARGE_CONCURRENCY))
        if m is None:
            continue
        rows = m.throughput * m.rows_per_request
        ratios[server] = _per_repeat_share(results, server, LARGE.rows, limit)
        share_max = _per_repeat_share(results, server, size_max, limit_max)
        label = LABELS[server] + (" (no model)" if server[0] == "constant" else "")
        # only tfgate exports its batch sizes
        batch = _fmt(m.values["batch_size_mean"], 1) if server[0] == "tfgate" else "-"
        lines.append(
            f"| {label} | {_fmt(rows)} | {_fmt(m.throughput)} | "
            f"{_fmt(m.p99_us / 1e3, 1)} | {batch} | {ratios[server]:.0%} | {share_max:.0%} | "
            f"{_fmt(m.values['gateway_cpu_us_per_request'])} / "
            f"{_fmt(m.values['server_cpu_us_per_request'])} |"
        )
    return lines, ratios


def render(results: SuiteResults, table: dict[Key, Median], plots: dict[str, pathlib.Path],
           docs_path: pathlib.Path) -> str:
    models = sorted({k[2] for k in table if "x" not in k[2] and "@" not in k[2]},
                    key=lambda m: ("tiny", "dnn", "cnn").index(m)
                    if m in ("tiny", "dnn", "cnn") else 9)
    concurrencies = sorted({k[3] for k in table if "x" not in k[2] and "@" not in k[2]})
    large_lines, large_ratios = large_table(results, table)
    out = [
        "# Benchmarks",
        "",
        "Generated by `tfgate bench suite` (bench/suite.py); do not edit by hand: rerun.",
        "Hand-written analysis (profiles, where the time goes) is in bench/analysis.md and",
        "is appended below.",
        "",
        "## How this was produced",
        "",
        f"- Command: `{results.command}`",
        f"- Started {results.started}, took {results.seconds / 60:.1f} min.",
        f"- Machine: {_machine(results.machine)}",
        f"- BentoML: {results.bentoml or 'not requested'}",
        "- tfgate flags beyond the defaults: `" + " ".join([
            "--enable_batching", "--batching_parameters_file=bench/batching_parameters.pbtxt",
            "--config=bench/tfgate.toml", *results.tfgate_args,
        ]) + "`",
        f"- tfgate's gRPC transport: {grpc_transport(results.tfgate_args)}",
        "- The in-process limit uses the TF session setting tfgate's workers get by default "
        "(idle TF threads sleep: `experimental.disable_thread_spinning`); on this machine it "
        "runs faster so than with TF's spinning default (bench/analysis.md).",
        "The large-request limit is measured again just before and just after each repeat's "
        "large runs, and each repeat's share uses the mean of the two: the host's speed drifts "
        "during a run (by up to ~1.5x within minutes on this machine).",
        "- Batching: max_batch_size 256, batch_timeout_micros 0 for every model; cnn and tiny "
        "(1-row workloads only) are capped at 32 rows by bench/tfgate.toml, which says why. "
        "`tfgate stock config` is a second tfgate with the batching file TF Serving users "
        "typically write (bench/batching_stock.pbtxt: max_batch_size 64, batch_timeout_micros "
        "1000, num_batch_threads 2, max_enqueued_batches 1000000) and no TOML, measured at "
        "c=64 only.",
        "- Request bodies: TF Serving's row format; numbers printed with 6 significant digits "
        "(`6g`), and at c=64 also with 4 decimals (`4f`) for tfgate, the stock config and "
        "naive (bench/workloads.py NUMBER_FORMATS). The constant-reply ceilings are measured "
        "from c=64 up.",
        "- Ceilings: `constant REST` and `constant gRPC` are one uvicorn + grpc.aio process "
        "(bench/baselines/fastapi_servers.py) that reads each request and sends a fixed reply "
        "without running a model: the most a Python HTTP or grpc.aio front does on these cores "
        "(tfgate's own HTTP/2 gRPC server is not grpc.aio, so it can pass the gRPC one).",
        "- Load: bench/loadgen.py, closed loop (N requests always outstanding, one per "
        "keep-alive connection; gRPC: N concurrent unary calls over raw HTTP/2 "
        "(bench/grpc_h2.py, ~100 us of client CPU per 64-row call where grpc.aio's client "
        "spends ~250-300 us)), a warm-up, then windows "
        "until the last 3 agree within 10% on throughput and p99 (perf_analyzer's rule). "
        "Every server is measured back to back at each level; each figure is the median of "
        "the repeats, each ratio the median of per-repeat ratios.",
        "- The load generator runs on the same 2 cores as the servers, as every client here "
        "does: absolute numbers are low, ratios are what to read.",
        f"- Errors inside measured windows (not counted as throughput): {_errors(results)}",
        "",
        "## Targets",
        "",
        *evaluate(results, table, large_ratios),
        "",
    ]
    for model in models:
        out += [f"## {model}: 1 row per request", "",
                "Requests/s (= inferences/s); ratios are tfgate REST against each baseline.", "",
                *workload_table(results, table, model, concurrencies), ""]
        if model in plots:
            rel = os.path.relpath(plots[model], docs_path.parent)
            out += [f"![{model}: throughput and p99 against concurrency]({rel})", ""]
    stock_lines = stock_table(results, table)
    if len(stock_lines) > 2:
        out += ["## Stock config and number formats", "",
                "tfgate with the tuned benchmark files and with the stock batching file (no "
                "per-model TOML), against naive, on the same workload printed two ways.", "",
                *stock_lines, ""]
    transport_lines = transport_table(results, table)
    if len(transport_lines) > 2:
        main, other = grpc_transports(results.tfgate_args)
        out += ["## gRPC transports side by side", "",
                f"The same tuned tfgate twice, once per gRPC transport ({main}: "
                f"{TRANSPORTS.get(main, main)}; {other}: {TRANSPORTS.get(other, other)}), "
                "measured back to back in each repeat; the ratio is the median of per-repeat "
                "ratios. Gateway CPU is the gateway process's CPU time over the measured "
                "windows per answered call (the worker's is apart).", "",
                *transport_lines, ""]
    out += ["## Large requests: dnn, 64 rows per request, concurrency 8", "", *large_lines, "",
            *_micro(results), "", "## Raw data", "",
            "bench/results/: perf_*.csv (perf_analyzer's CSV columns, then tfgate's), "
            "levels_raw.csv (every window-aggregated level of every repeat), results.json.", ""]
    for section in SECTIONS:
        if section.exists():
            out += [section.read_text().rstrip(), ""]
    if ANALYSIS.exists():
        out += [ANALYSIS.read_text().rstrip(), ""]
    return "\n".join(out)


def _errors(results: SuiteResults) -> str:
    counts: dict[str, int] = {}
    for r in results.levels:
        for kind, n in r.errors.items():
            key = f"{LABELS.get((r.target, r.protocol), r.target)} {kind}"
            counts[key] = counts.get(key, 0) + n
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def _machine(m: dict) -> str:
    return (f"{m.get('cpu')} x{m.get('cores')} cores, {m.get('memory_gib')} GiB, Linux "
            f"{m.get('kernel')}, Python {m.get('python')}, tensorflow {m.get('tensorflow')}, "
            f"uvicorn {m.get('uvicorn')}, grpcio {m.get('grpcio')}, numpy {m.get('numpy')}")


def _micro(results: SuiteResults) -> list[str]:
    c, i = results.codec, results.ipc
    return [
        "## Codec alone (one core)", "",
        f"TF Serving JSON with a {c.get('json_bytes', 0) / 1e3:.0f} kB body (64 x 256 float32), "
        "MB/s of JSON text:", "",
        "| path | decode JSON -> float32 | encode float32 -> JSON |", "|---|---|---|",
        f"| app.codec.tensor_json (TF Serving's float formatting) | {_fmt(c.get('decode_mb_s', math.nan), 1)}"
        f" | {_fmt(c.get('encode_mb_s', math.nan), 1)} |",
        f"| orjson -> lists -> ndarray (reference; float64 repr on encode) | "
        f"{_fmt(c.get('decode_orjson_lists_mb_s', math.nan), 1)} | "
        f"{_fmt(c.get('encode_orjson_lists_mb_s', math.nan), 1)} |",
        "", "## Shared-memory IPC", "",
        f"A {i.get('tensor_bytes', 0) / 2**20:.0f} MB float32 tensor gateway -> worker -> "
        "gateway (4 MB in, 4 MB out) through a real WorkerPool, median of the runs: "
        f"round trip {_fmt(i.get('round_trip_ms_median', math.nan), 2)} ms, of which the "
        f"model ran {_fmt(i.get('model_run_ms_median', math.nan), 2)} ms: **IPC "
        f"{_fmt(i.get('ipc_ms_median', math.nan), 2)} ms** "
        f"(p90 {_fmt(i.get('ipc_ms_p90', math.nan), 2)} ms).",
    ]
