"""The dashboard's HTTP routes: the static page at /dashboard (no token: it holds no data) and
its data at /v1/admin/dashboard/stats behind the admin API's own bearer-token check.

Edge of the dashboard: browser -> these routes -> dashboard.stats (read only). Everything the
page shows or changes besides the load charts comes from the admin API itself (admin_routes).
"""

from __future__ import annotations

import importlib.resources
import math

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse, Response

from app.admin.tokens import AdminTokens
from app.core.errors import Code, ServingError
from app.dashboard.stats import DashboardSources
from app.rest.admin_routes import NO_STORE, admin_authorizer

# The page runs only its own files: no inline script or style, no other origin, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # The files change with the installed version only; revalidating costs one round trip.
    "Cache-Control": "no-cache",
}
# The only files served, by URL name: nothing under the package is reachable by path.
STATIC_FILES = {
    "render.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def _static(name: str) -> bytes:
    return importlib.resources.files("app.dashboard").joinpath("static", name).read_bytes()


def dashboard_router(sources: DashboardSources, tokens: AdminTokens) -> APIRouter:
    """Read the static files once (they ship inside the package) and route them and the
    stats endpoint."""
    page = _static("index.html")
    files = {name: (_static(name), media_type) for name, media_type in STATIC_FILES.items()}
    router = APIRouter()

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @router.get("/dashboard/", include_in_schema=False)
    async def dashboard_slash() -> Response:
        return RedirectResponse("/dashboard", status_code=308)

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def dashboard_file(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise ServingError(Code.NOT_FOUND, f"No dashboard file {name[:64]!r}")
        body, media_type = found
        return Response(body, media_type=media_type, headers=PAGE_HEADERS)

    @router.get("/v1/admin/dashboard/stats", dependencies=[Depends(admin_authorizer(tokens))])
    async def dashboard_stats(since: str | None = None) -> Response:
        """Load series of the last minutes (only points after `since`, wall seconds, when
        given), worker processes, result cache, server state."""
        return Response(orjson.dumps(sources.stats(_since(since))),
                        media_type="application/json", headers=NO_STORE)

    return router


def _since(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text[:32])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ServingError(
            Code.INVALID_ARGUMENT, f"since must be a time in seconds, got {text[:40]!r}"
        )
    return value
