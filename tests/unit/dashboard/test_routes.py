"""The dashboard's routes: the page and its two files without a token, under a strict
Content-Security-Policy and with no inline code; the stats endpoint behind the admin API's
own token check (401 without, 403 wrong, 503 when no token is configured), never cached."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.admin.tokens import AdminTokens
from app.dashboard.sampler import LoadSampler
from app.dashboard.stats import DashboardSources
from app.ops.metrics import Metrics
from app.rest.admin_routes import install_error_handler
from app.rest.dashboard_routes import dashboard_router

TOKEN = "t0ken"


def client(tokens: list[str]) -> TestClient:
    metrics = Metrics()
    ticks = iter([100.0, 102.0])
    sampler = LoadSampler(metrics, interval_seconds=1, window_seconds=10,
                          clock=lambda: next(ticks))
    metrics.request_count.inc("m", "OK")
    sampler.sample()
    metrics.request_count.inc("m", "OK", amount=2)
    sampler.sample()
    sources = DashboardSources(
        sampler=sampler,
        workers=lambda: [{"index": 0, "alive": True, "restarts": 2}],
        draining=lambda: False,
        cache=lambda: {"breaker": "closed", "hit_ratio": 0.5},
    )
    app = FastAPI()
    install_error_handler(app)
    app.include_router(dashboard_router(sources, AdminTokens(tokens)))
    return TestClient(app)


def test_page_needs_no_token_and_carries_strict_headers() -> None:
    http = client([TOKEN])
    page = http.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    # No inline script or style, no event-handler attributes, nothing from another origin.
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="/dashboard/static/render.js" defer>',
        '<script src="/dashboard/static/dashboard.js" defer>',
    ]
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    assert "http://" not in html and "https://" not in html
    for name, media_type in (("dashboard.js", "text/javascript"), ("render.js", "text/javascript"),
                             ("dashboard.css", "text/css")):
        file = http.get(f"/dashboard/static/{name}")
        assert file.status_code == 200
        assert file.headers["content-type"].startswith(media_type)
        assert file.headers["x-content-type-options"] == "nosniff"
    assert http.get("/dashboard/", follow_redirects=False).status_code == 308


@pytest.mark.parametrize("name", ["index.html", "..%2F..%2Fmain.py", "sampler.py", "x" * 200])
def test_only_the_listed_files_are_served(name: str) -> None:
    answer = client([TOKEN]).get(f"/dashboard/static/{name}")
    assert answer.status_code == 404
    # a decoded slash leaves the route altogether (FastAPI's own 404, in the API's shape)
    assert answer.json()["error"] in (f"No dashboard file {name[:64]!r}", "Not Found")


def test_stats_need_the_admin_token() -> None:
    http = client([TOKEN])
    missing = http.get("/v1/admin/dashboard/stats")
    assert missing.status_code == 401
    assert missing.json() == {"error": "Missing bearer token for the admin API"}
    wrong = http.get("/v1/admin/dashboard/stats", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert wrong.json() == {"error": "Invalid admin token"}
    ok = http.get("/v1/admin/dashboard/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert ok.headers["cache-control"] == "no-store"
    body = ok.json()
    assert body["workers"] == [{"index": 0, "alive": True, "restarts": 2}]
    assert body["cache"] == {"breaker": "closed", "hit_ratio": 0.5}
    assert body["draining"] is False
    assert body["load"]["models"]["m"]["requests_per_second"] == [1.0]
    later = http.get("/v1/admin/dashboard/stats", params={"since": body["load"]["t"][-1]},
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert later.json()["load"]["t"] == []
    bad = http.get("/v1/admin/dashboard/stats", params={"since": "nan"},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "since must be a time in seconds, got 'nan'"


def test_without_configured_tokens_stats_answer_as_the_admin_api_does() -> None:
    http = client([])
    assert http.get("/dashboard").status_code == 200  # the page itself holds no data
    answer = http.get("/v1/admin/dashboard/stats", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 503
    assert answer.json()["error"].startswith("The admin API is disabled")


@pytest.mark.parametrize("with_dashboard", [True, False])
def test_the_dashboard_is_served_wherever_the_admin_api_is(with_dashboard: bool) -> None:
    """rest/server.py mounts the page beside the admin routes (the REST port, or the admin
    port when [admin] port is set): the page calls the admin API on its own origin."""
    import types

    from app.rest.server import include_admin

    metrics = Metrics()
    server = types.SimpleNamespace(
        admin=None,
        admin_tokens=AdminTokens([TOKEN]),
        dashboard=DashboardSources(LoadSampler(metrics), workers=list, draining=bool)
        if with_dashboard else None,
    )
    app = FastAPI()
    install_error_handler(app)
    include_admin(app, server)  # type: ignore[arg-type]
    http = TestClient(app)
    assert http.get("/v1/admin/models").status_code == 401  # the admin API is there
    assert http.get("/dashboard").status_code == (200 if with_dashboard else 404)
    assert http.get("/v1/admin/dashboard/stats").status_code == (401 if with_dashboard else 404)
