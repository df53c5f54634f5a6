"""Prometheus metrics under TF Serving's names, plus tfgate's own; text exposition.

Observers registered by main.py feed it from serving/service.py (requests), serving/batcher.py
(batches, queueing), lifecycle/manager.py (model states) and runtime/pool.py (restarts). Served on
the REST port at the monitoring config's path and at /metrics.

TF Serving exports `:tensorflow:serving:request_count` as a counter *without* the `_total`
suffix that prometheus_client appends to every counter, and dashboards built for TF Serving
query those exact names; so this module keeps its own small registry of ops/metric_types.py's
metrics, which write the text format as TF Serving's exporter does. Event-loop only (no
locks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

from app.core.state_events import StateEventBus, VersionStateEvent
from app.ops.metric_types import (
    CallbackCounter,
    CallbackGauge,
    Counter,
    Gauge,
    Histogram,
    Metric,
    exponential_buckets,
)

# The hook lists connect() appends to, named by what it needs instead of importing the
# components: ops/ sits below serving/, lifecycle/ and runtime/, which all feed it.


class ConfiguredModels(Protocol):  # lifecycle.registry.Registry
    def configured(self, name: str) -> object | None: ...


class RequestHooks(Protocol):  # serving.service.ServingService
    registry: ConfiguredModels
    observers: list[Any]  # (model, api, entrypoint, code, seconds)
    runtime_observers: list[Any]  # (model, api, seconds)
    example_observers: list[Any]  # (model, examples)


class BatchHooks(Protocol):  # serving.batcher.Batcher
    observers: list[Any]  # (servable, rows, pad_rows, queued_seconds, pool_name)


class WorkerHooks(Protocol):  # runtime.pool.WorkerPool
    on_run: list[Any]  # (servable, rows, run_seconds)
    on_warmup: list[Any]  # (version_path, warmup_seconds)
    on_restart: list[Any]  # (worker_index)

    def rss_by_worker(self) -> list[tuple[int, int]]: ...


class StateHooks(Protocol):  # lifecycle.manager.VersionManager
    events: StateEventBus  # VersionStateEvent among others
    load_observers: list[Any]  # (version_path, ok)


# TF Serving's bucket definitions: request_latency, runtime_latency and model_warmup_latency
# (10 us x 1.8^i, 33 bounds), batching_session's queuing_latency (100 us x 1.2^i, 52),
# request_example_counts (2^0 .. 2^14) and the batch sizes (2^0 .. 2^13).
LATENCY_BUCKETS_MICROS = exponential_buckets(10.0, 1.8, 33)
QUEUE_BUCKETS_MICROS = exponential_buckets(100.0, 1.2, 52)
EXAMPLE_COUNT_BUCKETS = exponential_buckets(1.0, 2.0, 15)
BATCH_SIZE_BUCKETS = exponential_buckets(1.0, 2.0, 14)

# Requests naming a model that is not configured are counted under this one label value: a
# client choosing model names must not choose the metric's series (unbounded cardinality, or
# bytes that are not text). Angle brackets cannot start a name TF Serving's REST routes take.
UNKNOWN_MODEL_LABEL = "<unknown>"


def _name(metric: Metric) -> str:
    return metric.name


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
            EXAMPLE_COUNT_BUCKETS,
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
        self.worker_run_latency = Histogram(
            "tfgate_worker_run_latency",
            "Distribution of wall time (in microseconds) of one model run in a worker (one "
            "executed batch or unbatched request), TF session time only.",
            ("model_name",),
            LATENCY_BUCKETS_MICROS,
        )
        self._metrics: list[Metric] = [
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
            self.worker_run_latency,
        ]

    def add(self, metric: Metric) -> None:
        self._metrics.append(metric)

    def counter_total(self, name: str) -> int:
        """A counter's value summed over its label sets, 0 if there is no such counter: what
        HandleReloadConfigRequest reports increases of for its `metric_names`."""
        for metric in self._metrics:
            if metric.name == name and isinstance(metric, Counter):
                return int(sum(metric.values.values()))
        return 0

    def render(self) -> bytes:
        """The whole page: TF Serving's metrics sorted by name (its exporter walks a map
        keyed by name), then tfgate's own in registration order."""
        tf_serving = sorted((m for m in self._metrics if m.tf_serving), key=_name)
        own = [m for m in self._metrics if not m.tf_serving]
        lines: list[str] = []
        for metric in (*tf_serving, *own):
            lines.extend(metric.render())
        # Label values are configured names, but a scrape must never fail on one that is not
        # valid text (a surrogate from a percent-decoded path): those bytes are escaped.
        return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")


def whole_micros(seconds: float) -> int:
    """TF Serving records latencies as whole microseconds (int64 from NowMicros)."""
    return int(seconds * 1e6)


def connect(
    metrics: Metrics,
    service: RequestHooks,
    batcher: BatchHooks,
    pool: WorkerHooks,
    manager: StateHooks,
) -> None:
    """Connect every component's observer hooks to the metrics registry."""

    def model_label(model: str) -> str:
        """The request's model name when it is configured, else UNKNOWN_MODEL_LABEL."""
        return model if service.registry.configured(model) is not None else UNKNOWN_MODEL_LABEL

    def on_request(model: str, api: str, entrypoint: Any, code: Any, seconds: float) -> None:
        model = model_label(model)
        metrics.request_count.inc(model, code.name)
        if code.name == "OK":
            # TF Serving's gRPC handlers name the API by its RPC ("Predict"); its REST
            # handler by the URL's verb ("predict"). V2 infer is "v2_infer" on both.
            grpc_named = entrypoint.value == "GRPC" and not api.startswith("v2_")
            label = api.capitalize() if grpc_named else api
            metrics.request_latency.observe(
                model, label, entrypoint.value, value=whole_micros(seconds)
            )

    def on_batch(
        servable: Any, rows: list[int], pad_rows: int, queued: list[float], pool_name: str
    ) -> None:
        total = sum(rows) + pad_rows
        for task_rows, seconds in zip(rows, queued, strict=True):
            metrics.queuing_latency.observe(pool_name, value=whole_micros(seconds))
            metrics.input_batch_size.observe(servable.model, "", value=task_rows)
        metrics.processed_batch_size.observe(servable.model, "", value=total)
        metrics.padding_size.observe(servable.model, str(total), "", value=pad_rows)
        metrics.wrapped_run_count.inc(pool_name)

    def on_runtime(model: str, api: str, seconds: float) -> None:
        # The API as TF Serving names it ("Predict", "Classify", "Regress"), REST or gRPC
        # alike; its runtime label is "TF1" for every SavedModel session.
        metrics.runtime_latency.observe(model, api, "TF1", value=whole_micros(seconds))

    def on_run(servable: Any, rows: int, run_seconds: float) -> None:
        metrics.executed_batch_rows.observe(servable.model, value=rows)
        metrics.worker_run_latency.observe(servable.model, value=whole_micros(run_seconds))

    def on_state(event: Any) -> None:
        if isinstance(event, VersionStateEvent):
            state = int(event.state)
            metrics.model_state.set(event.servable.model, str(event.servable.version), value=state)

    def on_examples(model: str, examples: int) -> None:
        model = model_label(model)
        metrics.request_example_counts.observe(model, value=examples)
        metrics.request_example_count_total.inc(model, amount=examples)

    def on_load_attempt(version_path: str, ok: bool) -> None:
        # TF's SavedModel loader counts every attempt under its export directory.
        metrics.load_attempt_count.inc(version_path, "success" if ok else "fail")

    service.observers.append(on_request)
    service.runtime_observers.append(on_runtime)
    service.example_observers.append(on_examples)
    batcher.observers.append(on_batch)
    pool.on_run.append(on_run)
    pool.on_warmup.append(
        # saved_model_warmup_util labels a finished warmup with its status text ("OK"); a
        # failed one fails the load and is counted by load_attempt_count instead.
        lambda path, seconds: metrics.model_warmup_latency.observe(
            path, "OK", value=whole_micros(seconds)
        )
    )
    pool.on_restart.append(lambda index: metrics.worker_restarts.inc(str(index)))
    metrics.add(
        CallbackGauge(
            "tfgate_worker_resident_memory_bytes",
            "Resident memory of each live worker process, as it reported with its last "
            "load, unload or ping reply.",
            ("worker",),
            lambda: [((str(index),), float(rss)) for index, rss in pool.rss_by_worker()],
        )
    )
    manager.events.subscribe(on_state)
    manager.load_observers.append(on_load_attempt)


class TrafficRows(Protocol):  # traffic.router.TrafficRouter
    def metric_rows(self) -> list[tuple[tuple[str, str, str], dict[str, float]]]: ...

    rollback_observers: list[Callable[[Any], None]]


# tfgate_traffic_* metric -> (its type, the metric_rows() value it shows, help)
TRAFFIC_METRICS = (
    ("tfgate_traffic_requests_total", "counter", "requests",
     "Requests a traffic rule routed to each arm."),
    ("tfgate_traffic_errors_total", "counter", "errors",
     "Requests a traffic rule routed to each arm that failed."),
    ("tfgate_traffic_weight", "gauge", "weight",
     "Each arm's effective share of the traffic now (after ramp, rollback or bandit)."),
    ("tfgate_traffic_outcomes_total", "counter", "outcomes",
     "Outcomes (conversions and rewards) reported for each arm."),
    ("tfgate_traffic_conversions_total", "counter", "conversions",
     "Binary outcomes reported as converted for each arm."),
)


def connect_traffic(metrics: Metrics, traffic: TrafficRows) -> None:
    """Per-arm traffic metrics (labels model, arm, version: arm names come from configured
    rules only, never from requests), read from the live rules at scrape time."""
    labels = ("model", "arm", "version")
    for name, kind, key, help_text in TRAFFIC_METRICS:
        cls = CallbackCounter if kind == "counter" else CallbackGauge
        metrics.add(
            cls(
                name,
                help_text,
                labels,
                functools.partial(_traffic_samples, traffic, key),
            )
        )
    rollbacks = Counter(
        "tfgate_traffic_rollbacks_total",
        "Canary rollbacks a traffic rule made by itself.",
        ("model",),
    )
    metrics.add(rollbacks)
    traffic.rollback_observers.append(lambda live: rollbacks.inc(live.model))


def _traffic_samples(
    traffic: TrafficRows, key: str
) -> list[tuple[tuple[str, ...], float]]:
    return [(labels, float(values[key])) for labels, values in traffic.metric_rows()]
