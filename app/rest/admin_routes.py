"""REST routes of the admin API under /v1/admin/ (auth required on every route).

Edge of the admin path: HTTP -> admin_routes (auth, parse) -> AdminApi. Errors use TF
Serving's body shape `{"error": "..."}` and its code -> HTTP table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.admin.api import AdminApi
from app.admin.tokens import AdminTokens
from app.core.errors import Code, ServingError

log = logging.getLogger("tfgate.http")


def _json(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def install_error_handler(app: FastAPI) -> None:
    """Every error this app answers has TF Serving's body shape, FastAPI's own 404 / 405 /
    422 and an unexpected exception's 500 included (FastAPI would answer {"detail": ...})."""

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Response:
        return _json({"error": exc.message}, exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        response = _json({"error": str(exc.detail)}, exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', '')}"
            for error in exc.errors()
        )
        return _json({"error": f"Invalid request: {problems}"}, 400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _json({"error": "Internal server error"}, 500)


# Admin answers describe live state: no browser or proxy may keep a copy (the dashboard
# polls them; a cached listing would show a pin that is gone).
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def admin_authorizer(tokens: AdminTokens) -> Callable[..., None]:
    """The FastAPI dependency every admin route (and the dashboard's data route) runs."""

    def authorize(authorization: Annotated[str | None, Header()] = None) -> None:
        tokens.check(authorization)

    return authorize


def admin_router(admin: AdminApi, tokens: AdminTokens) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", dependencies=[Depends(admin_authorizer(tokens))])

    def _json(payload: Any) -> Response:
        return Response(orjson.dumps(payload), media_type="application/json", headers=NO_STORE)

    @router.get("/models")
    async def list_models() -> Response:
        """Every model: versions with state and error, labels, pin, policy, base path."""
        return _json(admin.list_models())

    @router.get("/models/{name}")
    async def describe(name: str) -> Response:
        return _json(admin.describe(name))

    @router.post("/models/{name}/pin")
    async def pin(name: str, request: Request) -> Response:
        """Serve `version` to requests that name no version or label; keep it loaded."""
        version = _version_from_body(await request.body())
        return _json(await admin.pin(name, version))

    @router.delete("/models/{name}/pin")
    async def unpin(name: str) -> Response:
        return _json(await admin.unpin(name))

    @router.post("/models/{name}/versions/{version}/load")
    async def load(name: str, version: str) -> Response:
        return _json(await admin.load_version(name, _version_from_path(version)))

    @router.post("/models/{name}/versions/{version}/unload")
    async def unload(name: str, version: str) -> Response:
        return _json(await admin.unload_version(name, _version_from_path(version)))

    @router.post("/models/{name}/sync")
    async def sync_now(name: str) -> Response:
        """Run the model's sync pass now; answers once it finished."""
        return _json(await admin.sync_now(name))

    @router.get("/models/{name}/traffic")
    async def get_traffic(name: str) -> Response:
        """The traffic rule, its state and per-arm statistics (404 without a rule)."""
        return _json(admin.get_traffic(name))

    @router.put("/models/{name}/traffic")
    async def set_traffic(name: str, request: Request) -> Response:
        return _json(await admin.set_traffic(name, _json_body(await request.body())))

    @router.delete("/models/{name}/traffic")
    async def delete_traffic(name: str) -> Response:
        return _json(await admin.delete_traffic(name))

    @router.post("/models/{name}/traffic/outcomes")
    async def report_outcome(name: str, request: Request) -> Response:
        return _json(admin.report_outcome(name, _json_body(await request.body())))

    @router.post("/reload-config")
    async def reload_config() -> Response:
        """Re-read --model_config_file and apply it (full replacement)."""
        return _json(await admin.reload_config())

    return router


def _json_body(body: bytes) -> Any:
    try:
        return orjson.loads(body or b"null")
    except orjson.JSONDecodeError:
        raise ServingError(Code.INVALID_ARGUMENT, "Body must be a JSON document") from None


def _version_from_body(body: bytes) -> int:
    try:
        payload = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise ServingError(Code.INVALID_ARGUMENT, 'Body must be JSON: {"version": N}') from None
    version = payload.get("version") if isinstance(payload, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ServingError(
            Code.INVALID_ARGUMENT, 'Body must be {"version": N} with N a version number'
        )
    return version


def _version_from_path(text: str) -> int:
    """The {version} of a route: digits only (FastAPI's own int check would answer 422 in
    its {"detail": ...} shape instead of the API's {"error": ...})."""
    digits = text.lstrip("0") or "0"
    # 19 digits: int64's width (versions are int64), and int() never meets its digit limit.
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ServingError(
            Code.INVALID_ARGUMENT, f"Version must be a non-negative integer, got {shown!r}"
        )
    return int(digits)
