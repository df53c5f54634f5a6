"""Prometheus metrics under TF Serving's names, plus tfgate's own; text exposition.

Observers registered by main.py feed it from service.py (requests), batcher.py (batches,
queueing), manager.py (model states) and worker_pool.py (restarts). Served on the REST port
at the monitoring config's path and at /metrics.

TF Serving exports `:tensorflow:serving:request_count` as a counter *without* the `_total`
suffix that prometheus_client appends to every counter, and dashboards built for TF Serving
query those exact names; so this module keeps its own small registry and writes the text
format itself. Event-loop only (no locks).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from app.state_events import VersionStateEvent

if TYPE_CHECKING:
    from app.batcher import Batcher
    from app.manager import VersionManager
    from app.service import ServingService
    from app.worker_pool import WorkerPool

# TF Serving's request_latency / runtime_latency buckets are exponential in microseconds.
LATENCY_BUCKETS_MICROS = tuple(10.0 * 1.8**i for i in range(33))
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(14))
QUEUE_BUCKETS_MICROS = tuple(10.0 * 2.0**i for i in range(24))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        lines = self.header()
        for labels, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_number(value)}")
        return lines


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        self.values[labels] = value


class CallbackGauge(_Metric):
    """A gauge whose samples are computed at scrape time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str],
        read: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        super().__init__(name, help_text, label_names)
        self.read = read

    def render(self) -> list[str]:
        lines = self.header()
        for labels, value in sorted(self.read()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_number(value)}")
        return lines


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, label_names: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(buckets)
        # labels -> [per-bucket counts..., +Inf count], sum
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}

    def observe(self, *labels: str, value: float) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
            self.sums[labels] = 0.0
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def count(self, *labels: str) -> int:
        return sum(self.counts.get(labels, ()))

    def mean(self, *labels: str) -> float:
        n = self.count(*labels)
        return self.sums.get(labels, 0.0) / n if n else 0.0

    def render(self) -> list[str]:
        lines = self.header()
        for labels in sorted(self.counts):
            cumulative = 0
            counts = self.counts[labels]
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                le = f'le="{_number(bound)}"'
                lines.append(
                    f"{self.name}_bucket{_labels(self.label_names, labels, le)} {cumulative}"
                )
            label_text = _labels(self.label_names, labels)
            lines.append(f"{self.name}_sum{label_text} {_number(self.sums[labels])}")
            lines.append(f"{self.name}_count{label_text} {cumulative}")
        return lines


class Metrics:
    """Every metric of one server process."""

    def __init__(self) -> None:
        p = ":tensorflow:serving:"
        self.request_count = Counter(
            p + "request_count", "The total number of requests.", ("model_name", "status")
        )
        self.request_latency = Histogram(
            p + "request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            LATENCY_BUCKETS_MICROS,
        )
        self.runtime_latency = Histogram(
            p + "runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"),
            LATENCY_BUCKETS_MICROS,
        )
        self.request_example_counts = Histogram(
            p + "request_example_counts",
            "The number of tensorflow.Examples per request.",
            ("model",),
            BATCH_SIZE_BUCKETS,
        )
        self.request_example_count_total = Counter(
            p + "request_example_count_total",
            "The total number of tensorflow.Examples.",
            ("model",),
        )
        self.queuing_latency = Histogram(
            p + "batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            ("thread_pool_name",),
            QUEUE_BUCKETS_MICROS,
        )
        self.input_batch_size = Histogram(
            p + "batching_session:input_batch_size",
            "Tracks the batch size distribution on the inputs by model_name (if available).",
            ("model_name", "op_name"),
            BATCH_SIZE_BUCKETS,
        )
        self.processed_batch_size = Histogram(
            p + "batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing by model_name (if available).",
            ("model_name", "op_name"),
            BATCH_SIZE_BUCKETS,
        )
        self.padding_size = Histogram(
            p + "batching_session:padding_size",
            "Tracks the padding size distribution on batches by model_name (if available).",
            ("model_name", "execution_batch_size", "op_name"),
            BATCH_SIZE_BUCKETS,
        )
        self.wrapped_run_count = Counter(
            p + "batching_session:wrapped_run_count",
            "Tracks the number of batched runs executed.",
            ("thread_pool_name",),
        )
        self.model_warmup_latency = Histogram(
            p + "model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ("model_path", "status"),
            LATENCY_BUCKETS_MICROS,
        )
        self.load_attempt_count = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            ("model_path", "status"),
        )
        # tfgate's own
        self.worker_restarts = Counter(
            "tfgate_worker_restarts",
            "Worker processes restarted after they died or hung.",
            ("worker",),
        )
        self.model_state = Gauge(
            "tfgate_model_version_state",
            "Version state as in GetModelStatus (10 START .. 30 AVAILABLE .. 50 END).",
            ("model_name", "version"),
        )
        self.executed_batch_rows = Histogram(
            "tfgate_executed_batch_rows",
            "Rows per executed batch, padding included.",
            ("model_name",),
            BATCH_SIZE_BUCKETS,
        )
        self._metrics: list[_Metric] = [
            self.request_count,
            self.request_latency,
            self.runtime_latency,
            self.request_example_counts,
            self.request_example_count_total,
            self.queuing_latency,
            self.input_batch_size,
            self.processed_batch_size,
            self.padding_size,
            self.wrapped_run_count,
            self.model_warmup_latency,
            self.load_attempt_count,
            self.worker_restarts,
            self.model_state,
            self.executed_batch_rows,
        ]

    def add(self, metric: _Metric) -> None:
        self._metrics.append(metric)

    def counter_total(self, name: str) -> int:
        """A counter's value summed over its label sets, 0 if there is no such counter: what
        HandleReloadConfigRequest reports increases of for its `metric_names`."""
        for metric in self._metrics:
            if metric.name == name and isinstance(metric, Counter):
                return int(sum(metric.values.values()))
        return 0

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode()


def connect(
    metrics: Metrics,
    service: ServingService,
    batcher: Batcher,
    pool: WorkerPool,
    manager: VersionManager,
) -> None:
    """Connect every component's observer hooks to the metrics registry."""

    def on_request(model: str, api: str, entrypoint: Any, code: Any, seconds: float) -> None:
        metrics.request_count.inc(model, code.name)
        if code.name == "OK":
            # TF Serving's gRPC handlers name the API by its RPC ("Predict"); its REST
            # handler by the URL's verb ("predict").
            label = api.capitalize() if entrypoint.value == "GRPC" else api
            metrics.request_latency.observe(model, label, entrypoint.value, value=seconds * 1e6)

    def on_batch(
        servable: Any, rows: list[int], pad_rows: int, queued: list[float], pool_name: str
    ) -> None:
        total = sum(rows) + pad_rows
        for task_rows, seconds in zip(rows, queued, strict=True):
            metrics.queuing_latency.observe(pool_name, value=seconds * 1e6)
            metrics.input_batch_size.observe(servable.model, "", value=task_rows)
        metrics.processed_batch_size.observe(servable.model, "", value=total)
        metrics.padding_size.observe(servable.model, str(total), "", value=pad_rows)
        metrics.wrapped_run_count.inc(pool_name)

    def on_run(servable: Any, rows: int, run_seconds: float) -> None:
        metrics.runtime_latency.observe(servable.model, "Predict", "TF1", value=run_seconds * 1e6)
        metrics.executed_batch_rows.observe(servable.model, value=rows)

    def on_state(event: Any) -> None:
        if isinstance(event, VersionStateEvent):
            state = int(event.state)
            metrics.model_state.set(event.servable.model, str(event.servable.version), value=state)

    def on_examples(model: str, examples: int) -> None:
        metrics.request_example_counts.observe(model, value=examples)
        metrics.request_example_count_total.inc(model, amount=examples)

    def on_load_attempt(version_path: str, ok: bool) -> None:
        # TF's SavedModel loader counts every attempt under its export directory.
        metrics.load_attempt_count.inc(version_path, "success" if ok else "fail")

    service.observers.append(on_request)
    service.example_observers.append(on_examples)
    batcher.observers.append(on_batch)
    pool.on_run.append(on_run)
    pool.on_warmup.append(
        # saved_model_warmup_util labels a finished warmup with its status text ("OK"); a
        # failed one fails the load and is counted by load_attempt_count instead.
        lambda path, seconds: metrics.model_warmup_latency.observe(path, "OK", value=seconds * 1e6)
    )
    pool.on_restart.append(lambda index: metrics.worker_restarts.inc(str(index)))
    manager.events.subscribe(on_state)
    manager.load_observers.append(on_load_attempt)
