"""REST routes of the admin API under /v1/admin/ (auth required on every route).

Edge of the admin path: HTTP -> admin_routes (auth, parse) -> AdminApi. Errors use TF
Serving's body shape `{"error": "..."}` and its code -> HTTP table.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import Response

from app.admin import AdminApi, AdminTokens
from app.errors import Code, ServingError


def _json(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def install_error_handler(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Response:
        return _json({"error": exc.message}, exc.http_status)


def admin_router(admin: AdminApi, tokens: AdminTokens) -> APIRouter:
    def authorize(authorization: Annotated[str | None, Header()] = None) -> None:
        tokens.check(authorization)

    router = APIRouter(prefix="/v1/admin", dependencies=[Depends(authorize)])

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

    @router.post("/reload-config")
    async def reload_config() -> Response:
        """Re-read --model_config_file and apply it (full replacement)."""
        return _json(await admin.reload_config())

    return router


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
    if not text.isascii() or not text.isdigit():
        raise ServingError(
            Code.INVALID_ARGUMENT, f"Version must be a non-negative integer, got {text!r}"
        )
    return int(text)
