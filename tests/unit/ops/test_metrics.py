"""app/ops/metrics.py writes the Prometheus page byte for byte as TF Serving's exporter
(tensorflow_serving/util/prometheus_exporter.cc) writes it, and labels runtime_latency with
the API per call type."""

from __future__ import annotations

import types

from app.core.state_events import StateEventBus
from app.ops import metric_types, metrics
from app.ops.metric_types import Counter, Histogram, exponential_buckets, six_digits
from app.ops.metrics import Metrics


def test_histogram_lines_as_tf_serving_prints_them() -> None:
    # Bounds 1, 2, 4, ... 512 (TF: Buckets::Exponential(1, 2, 10)); 2, 20 and 200 observed.
    histogram = Histogram(":test:path:histogram", "A histogram.", ("status",),
                          exponential_buckets(1.0, 2.0, 10))
    for value in (2, 20, 200):
        histogram.observe("good", value=value)
    assert histogram.render() == [
        "# TYPE :test:path:histogram histogram",
        ':test:path:histogram_bucket{status="good",le="1"} 0',
        # 2 sits on a bound: TF's histogram counts it in the next bucket up
        ':test:path:histogram_bucket{status="good",le="2"} 0',
        ':test:path:histogram_bucket{status="good",le="4"} 1',
        ':test:path:histogram_bucket{status="good",le="8"} 1',
        ':test:path:histogram_bucket{status="good",le="16"} 1',
        ':test:path:histogram_bucket{status="good",le="32"} 2',
        ':test:path:histogram_bucket{status="good",le="64"} 2',
        ':test:path:histogram_bucket{status="good",le="128"} 2',
        ':test:path:histogram_bucket{status="good",le="256"} 3',
        ':test:path:histogram_bucket{status="good",le="512"} 3',
        ':test:path:histogram_bucket{status="good",le="+Inf"} 3',
        ':test:path:histogram_sum{status="good"} 222',
        ':test:path:histogram_count{status="good"} 3',
    ]


def test_latency_bounds_and_sums_print_as_absl_strcat_doubles() -> None:
    """absl::StrCat(double) is printf "%.6g": no ".0", six significant digits, exponent
    notation from 1e6 on."""
    histogram = Histogram(":tensorflow:serving:runtime_latency", "", ("model_name", "API", "runtime"),
                          metrics.LATENCY_BUCKETS_MICROS)
    histogram.observe("m", "Predict", "TF1", value=1234567)
    histogram.observe("m", "Predict", "TF1", value=10)
    lines = histogram.render()
    bounds = [line.split('le="')[1].split('"')[0] for line in lines if "_bucket{" in line]
    assert bounds[:21] == [
        "10", "18", "32.4", "58.32", "104.976", "188.957", "340.122", "612.22", "1102",
        "1983.59", "3570.47", "6426.84", "11568.3", "20823", "37481.3", "67466.4", "121440",
        "218591", "393464", "708235", "1.27482e+06",
    ]
    assert len(bounds) == 34 and bounds[-1] == "+Inf"
    assert ':tensorflow:serving:runtime_latency_bucket{model_name="m",API="Predict",' \
        'runtime="TF1",le="10"} 0' in lines  # 10 is on the first bound: next bucket
    assert ':tensorflow:serving:runtime_latency_bucket{model_name="m",API="Predict",' \
        'runtime="TF1",le="18"} 1' in lines
    assert lines[-2:] == [
        ':tensorflow:serving:runtime_latency_sum{model_name="m",API="Predict",runtime="TF1"} '
        "1.23458e+06",
        ':tensorflow:serving:runtime_latency_count{model_name="m",API="Predict",runtime="TF1"} 2',
    ]


def test_six_digits_matches_printf_g() -> None:
    assert [six_digits(v) for v in (0.0, 10.0, 0.5, 222.0, 1e-5, 123456.0, 1234567.0)] == [
        "0", "10", "0.5", "222", "1e-05", "123456", "1.23457e+06"]


def test_exponential_buckets_multiply_step_by_step() -> None:
    """TF's ComputeBucketLimits multiplies the previous bound, so float rounding accumulates
    the same way (10 * 1.8**i would differ in the last bits)."""
    bound, expected = 100.0, []
    for _ in range(52):
        expected.append(bound)
        bound *= 1.2
    assert tuple(expected) == metrics.QUEUE_BUCKETS_MICROS
    assert tuple(float(2**i) for i in range(15)) == metrics.EXAMPLE_COUNT_BUCKETS
    assert tuple(float(2**i) for i in range(14)) == metrics.BATCH_SIZE_BUCKETS
    assert len(metrics.LATENCY_BUCKETS_MICROS) == 33


def test_no_labels_keeps_the_braces() -> None:
    counter = Counter(":test:count", "A counter.")
    counter.inc()
    histogram = Histogram(":test:h", "", (), (1.0,))
    histogram.observe(value=0.5)
    assert counter.render() == ["# TYPE :test:count counter", ":test:count{} 1"]
    assert histogram.render() == [
        "# TYPE :test:h histogram", ':test:h_bucket{le="1"} 1', ':test:h_bucket{le="+Inf"} 1',
        ":test:h_sum{} 0.5", ":test:h_count{} 1"]


def test_label_values_escaped() -> None:
    counter = Counter(":test:path:total", "A counter.", ("name",))
    counter.inc('"abc\\"', amount=2)
    counter.inc("a\nb")
    assert counter.render()[1:] == [
        ':test:path:total{name="\\"abc\\\\\\""} 2', ':test:path:total{name="a\\nb"} 1']


def test_page_sorts_tf_serving_metrics_by_name_without_help_then_tfgate_own() -> None:
    page = Metrics().render().decode()
    lines = page.splitlines()
    tf_types = [line.split()[2] for line in lines if line.startswith("# TYPE :")]
    assert tf_types == sorted(tf_types) and len(tf_types) == 12
    assert not any(line.startswith("# HELP :") for line in lines)
    last_tf = max(i for i, line in enumerate(lines) if line.startswith("# TYPE :"))
    first_own = min(i for i, line in enumerate(lines) if line.startswith("# HELP tfgate_"))
    assert first_own > last_tf
    assert page.endswith("\n") and not page.endswith("\n\n")


def test_runtime_latency_labelled_with_each_api() -> None:
    registry = Metrics()
    service = types.SimpleNamespace(observers=[], runtime_observers=[], example_observers=[])
    batcher = types.SimpleNamespace(observers=[])
    pool = types.SimpleNamespace(
        on_run=[], on_warmup=[], on_restart=[], rss_by_worker=lambda: []
    )
    manager = types.SimpleNamespace(events=StateEventBus(), load_observers=[])
    metrics.connect(registry, service, batcher, pool, manager)  # type: ignore[arg-type]
    for api in ("Predict", "Classify", "Regress"):
        for observer in service.runtime_observers:
            observer("m", api, 0.0015)
    assert sorted(registry.runtime_latency.counts) == [
        ("m", "Classify", "TF1"), ("m", "Predict", "TF1"), ("m", "Regress", "TF1")]
    # whole microseconds, as TF Serving's int64 latencies
    assert registry.runtime_latency.sums[("m", "Predict", "TF1")] == 1500
    # a worker run feeds tfgate's own rows histogram, not runtime_latency
    for callback in pool.on_run:
        callback(types.SimpleNamespace(model="m"), 4, 0.01)
    assert registry.runtime_latency.count("m", "Predict", "TF1") == 1
    assert registry.executed_batch_rows.count("m") == 1
    assert registry.worker_run_latency.sums[("m",)] == 10000


def test_tfgate_own_metrics_keep_the_plain_form() -> None:
    gauge = metric_types.Gauge("tfgate_cache_breaker_state", "Breaker.")
    gauge.set(value=1)
    histogram = Histogram("tfgate_h", "H.", (), (1.0,))
    histogram.observe(value=0.5)
    assert gauge.render() == ["# HELP tfgate_cache_breaker_state Breaker.",
                              "# TYPE tfgate_cache_breaker_state gauge",
                              "tfgate_cache_breaker_state 1"]
    assert histogram.render()[-2:] == ["tfgate_h_sum 0.5", "tfgate_h_count 1"]
