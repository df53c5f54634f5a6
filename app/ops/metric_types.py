"""Prometheus metric types and their text exposition, as TF Serving's exporter writes it.

Data path position: below everything that counts. ops/metrics.py's registry holds these, and
serving/, cache/, sync/ and dashboard/ increment them; the scrape (rest/ops_routes.py) renders
them. The format follows TF Serving's util/prometheus_exporter.cc: no HELP lines for its
metrics, bucket bounds and sums printed as absl's StrCat prints a double (printf "%.6g"), the
last bucket as le="+Inf", and a value on a bucket's bound counted in the next bucket (TF's
Histogram: upper_bound). Event-loop only (no locks).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence


def exponential_buckets(scale: float, growth_factor: float, count: int) -> tuple[float, ...]:
    """TF's monitoring::Buckets::Exponential: each bound the previous one times the growth
    factor (multiplied step by step, so the bounds equal TF's to the last bit); the +Inf
    bucket above them is implicit."""
    bounds = [scale]
    for _ in range(count - 1):
        bounds.append(bounds[-1] * growth_factor)
    return tuple(bounds)


def _escape(value: str) -> str:
    # TF Serving escapes backslash and double quote; a newline is escaped too (TF Serving
    # would print it raw and break the page; a client can put one in a model name).
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_pairs(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


def _labels(metric: Metric, values: Sequence[str]) -> str:
    pairs = _label_pairs(metric.label_names, values)
    # TF Serving writes the braces even with no labels (`name{} 3`); tfgate's own metrics
    # use the plain form.
    return "{" + pairs + "}" if pairs or metric.tf_serving else ""


def _number(value: float) -> str:
    """A counter or gauge sample (TF Serving prints int64 values with %d)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def six_digits(value: float) -> str:
    """A double as absl::StrCat prints it (SixDigitsToBuffer, the same as printf "%.6g"):
    10 -> "10", 104.976 -> "104.976", 188.9568 -> "188.957", 1889568 -> "1.88957e+06"."""
    return f"{value:.6g}"


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)

    @property
    def tf_serving(self) -> bool:
        """One of TF Serving's metrics (its names start with ":"), written exactly as its
        exporter writes them."""
        return self.name.startswith(":")

    def header(self) -> list[str]:
        type_line = f"# TYPE {self.name} {self.kind}"
        if self.tf_serving:  # TF Serving's exporter writes no HELP line
            return [type_line]
        return [f"# HELP {self.name} {self.help}", type_line]


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        lines = self.header()
        for labels, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self, labels)} {_number(value)}")
        return lines


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        self.values[labels] = value


class CallbackGauge(Metric):
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
            lines.append(f"{self.name}{_labels(self, labels)} {_number(value)}")
        return lines


class Histogram(Metric):
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
        # TF's Histogram::Add: the first bucket whose limit is greater than the value.
        counts[bisect.bisect_right(self.buckets, value)] += 1
        self.sums[labels] += value

    def count(self, *labels: str) -> int:
        return sum(self.counts.get(labels, ()))

    def render(self) -> list[str]:
        lines = self.header()
        for labels in sorted(self.counts):
            pairs = _label_pairs(self.label_names, labels)
            separator = "," if pairs else ""
            bucket_prefix = f"{self.name}_bucket{{{pairs}{separator}le="
            cumulative = 0
            counts = self.counts[labels]
            for bound, count in zip(self.buckets, counts, strict=False):
                cumulative += count
                lines.append(f'{bucket_prefix}"{six_digits(bound)}"}} {cumulative}')
            cumulative += counts[-1]
            lines.append(f'{bucket_prefix}"+Inf"}} {cumulative}')
            label_text = _labels(self, labels)
            lines.append(f"{self.name}_sum{label_text} {six_digits(self.sums[labels])}")
            lines.append(f"{self.name}_count{label_text} {cumulative}")
        return lines


class CallbackCounter(CallbackGauge):
    """A counter whose samples are read at scrape time."""

    kind = "counter"
