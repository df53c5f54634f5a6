"""Which paths serve the metrics page: TF Serving's monitoring path (only when its
prometheus export is on) and tfgate's --metrics_path alias (unless empty)."""

from __future__ import annotations

import types

import pytest
from fastapi.routing import APIRoute

from app.rest.ops_routes import create_ops_app


def metric_paths(metrics_path: str, monitoring_path: str) -> list[str]:
    server = types.SimpleNamespace(
        settings=types.SimpleNamespace(metrics_path=metrics_path),
        monitoring_path=monitoring_path,
        metrics=types.SimpleNamespace(render=lambda: b""),
    )
    app = create_ops_app(server)  # type: ignore[arg-type]
    return sorted(r.path for r in app.routes
                  if isinstance(r, APIRoute) and r.path not in ("/healthz", "/readyz"))


@pytest.mark.parametrize(
    ("metrics_path", "monitoring_path", "expected"),
    [
        ("/metrics", "", ["/metrics"]),
        ("/metrics", "/monitoring/prometheus/metrics",
         ["/metrics", "/monitoring/prometheus/metrics"]),
        ("/metrics", "/metrics", ["/metrics"]),
        ("/stats", "", ["/stats"]),
        # the alias off: exactly TF Serving (monitoring path only, when enabled)
        ("", "/monitoring/prometheus/metrics", ["/monitoring/prometheus/metrics"]),
        ("", "", []),
    ],
)
def test_metrics_paths(metrics_path: str, monitoring_path: str, expected: list[str]) -> None:
    assert metric_paths(metrics_path, monitoring_path) == expected
