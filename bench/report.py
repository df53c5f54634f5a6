"""Turn level results into perf_analyzer-shaped CSVs, medians, ratio tables and PNG plots.

Data path position: after the load. bench/suite.py hands every LevelResult (all repeats)
here; CSVs and plots go to the results directory, and bench/docs.py renders the tables into
docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

from bench.stats import LevelResult, SuiteResults

# perf_analyzer's -f CSV header, verbatim (times in usec), then tfgate's extra columns.
PERF_ANALYZER_COLUMNS = [
    "Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv",
    "Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output",
    "Client Recv", "p50 latency", "p90 latency", "p95 latency", "p99 latency",
]
EXTRA_COLUMNS = [
    "Request Rate", "Requests/Second", "Avg latency", "Requests", "Errors", "Stable",
    "batch_size_mean", "gateway_cpu_us_per_request", "server_cpu_us_per_request", "repeats",
]
NUMERIC_FIELDS = [
    "throughput", "p50_us", "p90_us", "p95_us", "p99_us", "avg_us", "server_queue_us",
    "server_compute_us", "batch_size_mean", "server_cpu_us_per_request",
    "gateway_cpu_us_per_request",
]

Key = tuple[str, str, str, int]  # target, protocol, workload, concurrency


@dataclasses.dataclass
class Median:
    """The median over repeats of one (target, protocol, workload, concurrency) level."""

    target: str
    protocol: str
    workload: str
    concurrency: int
    rows_per_request: int
    values: dict[str, float]
    repeats: int
    errors: int
    requests: int
    all_stable: bool

    @property
    def throughput(self) -> float:
        return self.values["throughput"]

    @property
    def p99_us(self) -> float:
        return self.values["p99_us"]


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def medians(results: Sequence[LevelResult]) -> dict[Key, Median]:
    groups: dict[Key, list[LevelResult]] = defaultdict(list)
    for r in results:
        groups[(r.target, r.protocol, r.workload, r.concurrency)].append(r)
    out = {}
    for key, group in groups.items():
        out[key] = Median(
            *key,
            rows_per_request=group[0].rows_per_request,
            values={f: _median(getattr(r, f) for r in group) for f in NUMERIC_FIELDS},
            repeats=len(group),
            errors=sum(r.error_count for r in group),
            requests=sum(r.requests for r in group),
            all_stable=all(r.stable for r in group),
        )
    return out


def by_repeat(levels: list[LevelResult], target: str, protocol: str, workload: str,
              concurrency: int) -> dict[int, LevelResult]:
    """Repeat -> the level of that target, protocol, workload and concurrency."""
    return {int(r.extra.get("repeat", 0)): r for r in levels
            if (r.target, r.protocol, r.workload, r.concurrency)
            == (target, protocol, workload, concurrency)}


def ratio(levels: list[LevelResult], a: tuple[str, str], b: tuple[str, str], workload: str,
          concurrency: int, field: Callable[[LevelResult], float]) -> float:
    """Median over repeats of field(a) / field(b), pairing levels of the same repeat."""
    left = by_repeat(levels, *a, workload, concurrency)
    right = by_repeat(levels, *b, workload, concurrency)
    values = [field(left[k]) / field(right[k]) for k in left.keys() & right.keys()
              if field(right[k]) > 0]
    return statistics.median(values) if values else math.nan


def throughput(r: LevelResult) -> float:
    return r.inferences_per_second


def inprocess_by_size(results: SuiteResults, model: str) -> dict[int, float]:
    return {r["batch_size"]: r["rows_per_second"] for r in results.inprocess
            if r["model"] == model}


def _us(value: float) -> str:
    return "" if math.isnan(value) else str(round(value))


def perf_analyzer_row(m: Median) -> list[str]:
    v = m.values
    return [
        str(m.concurrency), f"{v['throughput'] * m.rows_per_request:.1f}", "0", "0",
        _us(v["server_queue_us"]), "0", _us(v["server_compute_us"]), "0", "0",
        _us(v["p50_us"]), _us(v["p90_us"]), _us(v["p95_us"]), _us(v["p99_us"]),
        "0", f"{v['throughput']:.1f}", _us(v["avg_us"]), str(m.requests), str(m.errors),
        str(m.all_stable), f"{v['batch_size_mean']:.2f}",
        f"{v['gateway_cpu_us_per_request']:.0f}", f"{v['server_cpu_us_per_request']:.0f}",
        str(m.repeats),
    ]


def write_csvs(table: dict[Key, Median], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """One perf_analyzer-style CSV per (target, protocol, workload); rows sorted by
    increasing throughput, as perf_analyzer sorts them."""
    series: dict[tuple[str, str, str], list[Median]] = defaultdict(list)
    for (target, protocol, workload, _), m in table.items():
        series[(target, protocol, workload)].append(m)
    paths = []
    for (target, protocol, workload), rows in sorted(series.items()):
        path = out_dir / f"perf_{workload}_{target}_{protocol}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PERF_ANALYZER_COLUMNS + EXTRA_COLUMNS)
            for m in sorted(rows, key=lambda m: m.throughput):
                writer.writerow(perf_analyzer_row(m))
        paths.append(path)
    return paths


def write_raw_csv(results: Sequence[LevelResult], path: pathlib.Path) -> None:
    fields = [f.name for f in dataclasses.fields(LevelResult) if f.name not in ("errors", "extra")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*fields, "errors"])
        for r in results:
            writer.writerow([getattr(r, name) for name in fields] + [r.errors])


SERIES_STYLE = {
    ("tfgate", "rest"): ("tfgate REST", "tab:blue", "o-"),
    ("tfgate", "grpc"): ("tfgate gRPC", "tab:cyan", "s-"),
    ("naive", "rest"): ("naive FastAPI", "tab:red", "v-"),
    ("bentoml", "rest"): ("BentoML adaptive", "tab:purple", "^-"),
    ("constant", "rest"): ("constant reply (REST ceiling)", "tab:gray", "x--"),
    ("constant", "grpc"): ("constant reply (gRPC ceiling)", "tab:olive", "+--"),
}


def plot_workload(
    table: dict[Key, Median], workload: str, inprocess: dict[int, float], path: pathlib.Path
) -> bool:
    """Throughput and p99 against concurrency for every server on one workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (target, protocol), (label, color, style) in SERIES_STYLE.items():
        points = sorted(
            (m.concurrency, m.throughput, m.p99_us / 1e3)
            for (t, p, w, _), m in table.items()
            if (t, p, w) == (target, protocol, workload)
        )
        if not points:
            continue
        xs = [p[0] for p in points]
        ax_t.plot(xs, [p[1] for p in points], style, color=color, label=label)
        ax_p.plot(xs, [p[2] for p in points], style, color=color, label=label)
    if inprocess:
        xs = sorted(inprocess)
        ax_t.plot(xs, [inprocess[x] for x in xs], ":", color="black",
                  label="in-process limit (batch = concurrency)")
    for ax, ylabel in ((ax_t, "requests/s (1 row each)"), (ax_p, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_title(f"{workload}: throughput")
    ax_p.set_title(f"{workload}: p99 latency")
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
