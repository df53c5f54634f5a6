"""REST front of the Open Inference Protocol (V2, KServe / Triton) beside TF Serving's /v1,
on the same port: health, server and model metadata, model readiness, and infer with JSON
tensors or Triton's binary tensor data extension.

Data path position: rest/api.py hands every /v2 path here (raw ASGI, the same fast path as
/v1) -> read body -> codec/v2_json.py parse -> serving/service.py predict (resolve -> cache ->
batcher -> worker: pins, labels, cache, batching, limits and metrics all apply) ->
codec/v2_response.py encode. Errors answer V2's `{"error": "<message>"}` with the HTTP status of
their canonical code (400 bad input, 404 unknown model, 429, 503, 504, ...).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections.abc import Callable

import orjson

from app import __version__
from app.codec import v2_json, v2_response
from app.codec.tensor import request_budget
from app.core.errors import Code, ServingError, invalid_argument
from app.core.types import ModelSpec
from app.rest.api import (
    REQUEST_ID_RE,
    PayloadTooLarge,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    request_id_of,
    routing_key_of,
)
from app.rest.edge import send_whole
from app.serving.auth import InferenceAuth, credential_from
from app.serving.service import V2_INFER_API, Entrypoint, PredictResult, ServingService

SERVER_NAME = "tfgate"
access_log = logging.getLogger("tfgate.access")
log = logging.getLogger("tfgate.rest")
MODEL_RE = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")
HEALTH_PATHS = {"/v2/health/live": "live", "/v2/health/ready": "ready"}
INFERENCE_HEADER_LENGTH = b"inference-header-content-length"
Response = tuple[int, bytes, list[tuple[bytes, bytes]]]
JSON_CONTENT = (b"content-type", b"application/json")
BINARY_CONTENT = (b"content-type", b"application/octet-stream")


class V2RestApi:
    """ASGI app for the /v2 paths rest/api.py routes here. Event-loop only."""

    def __init__(
        self,
        service: ServingService,
        *,
        server_ready: Callable[[], bool],
        timeout_ms: int,
        max_body_bytes: int,
        auth: InferenceAuth | None = None,
        max_tensor_bytes: int = 0,
        access_log: bool = False,
    ) -> None:
        self.service = service
        self.access_log = access_log
        self.server_ready = server_ready
        self.timeout_seconds = timeout_ms / 1000 if timeout_ms > 0 else None
        self.max_body_bytes = max_body_bytes
        self.auth = auth or InferenceAuth.disabled()
        self.max_tensor_bytes = max_tensor_bytes


    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        started = time.perf_counter()
        status, body, headers = await self._handle(scope, receive, path)
        if not any(key == b"content-type" for key, _ in headers):
            headers.append(JSON_CONTENT)
        if not send_whole(send, status, headers, body):  # uvicorn's cycle: one write
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        if self.access_log:
            latency_ms = round((time.perf_counter() - started) * 1000, 3)
            access_log.info(
                "%s %s %d %.3fms",
                scope["method"],
                path,
                status,
                latency_ms,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "latency_ms": latency_ms,
                    "entrypoint": "REST",
                },
            )

    async def _handle(self, scope: Scope, receive: Receive, path: str) -> Response:
        method = scope["method"]
        try:
            if path in ("/v2", "/v2/"):
                self._expect(method, "GET", path)
                return self._json(
                    {
                        "name": SERVER_NAME,
                        "version": __version__,
                        "extensions": list(v2_json.EXTENSIONS),
                    }
                )
            if path in HEALTH_PATHS:
                self._expect(method, "GET", path)
                if HEALTH_PATHS[path] == "live":
                    return self._json({"live": True})
                ready = self.server_ready()
                return self._json({"ready": ready}, 200 if ready else 503)
            match = MODEL_RE.fullmatch(path)
            if match is None:
                raise ServingError(Code.NOT_FOUND, f"Not found: {method} {path}")
            name = urllib.parse.unquote(match.group(1), errors="surrogateescape")
            version_text = match.group(2) and urllib.parse.unquote(match.group(2))
            action = match.group(3)
            self._authorize(scope, name)
            if action == "infer":
                self._expect(method, "POST", path)
                body = await read_body(scope, receive, self.max_body_bytes)
                return await self._infer(scope, name, version_text, body)
            self._expect(method, "GET", path)
            if action == "ready":
                return self._model_ready(name, version_text)
            return self._metadata(name, version_text)
        except ServingError as exc:
            # A refused body may still be arriving: close rather than read the rest of it.
            extra = [(b"connection", b"close")] if isinstance(exc, PayloadTooLarge) else []
            return exc.http_status, v2_response.encode_error(exc.message), extra
        except Exception:
            log.exception("REST %s %s failed", method, path)
            return 500, v2_response.encode_error("Internal server error"), []

    @staticmethod
    def _json(payload: object, status: int = 200) -> Response:
        return status, orjson.dumps(payload), []

    @staticmethod
    def _expect(method: str, allowed: str, path: str) -> None:
        if method != allowed:
            raise ServingError(Code.UNIMPLEMENTED, f"Method {method} is not allowed on {path}")

    def _authorize(self, scope: Scope, name: str) -> None:
        if self.auth.enabled:
            credential = credential_from(
                header(scope, b"authorization"), header(scope, b"x-api-key")
            )
            self.auth.check(credential, name)

    def _model_ready(self, name: str, version_text: str | None) -> Response:
        """200 {"ready": true} when the version resolves to an AVAILABLE one; a model the
        config lists but cannot serve now is 503 {"ready": false} (as KServe answers)."""
        spec = v2_json.v2_model_spec(name, version_text)
        try:
            servable, _ = self.service.resolve(spec)
        except ServingError as exc:
            if exc.code is Code.NOT_FOUND and self.service.registry.configured(name):
                return self._json({"name": name, "ready": False}, 503)
            if exc.code is Code.NOT_FOUND:
                raise ServingError(
                    Code.NOT_FOUND, f"Model with name {name} does not exist."
                ) from None
            raise
        return self._json({"name": name, "version": str(servable.version), "ready": True})

    def _metadata(self, name: str, version_text: str | None) -> Response:
        spec = v2_json.v2_model_spec(name, version_text)
        _, metadata = self.service.resolve(spec)
        versions = self.service.available_versions(name)
        return self._json(v2_response.model_metadata(name, versions, metadata.signatures))

    async def _infer(
        self, scope: Scope, name: str, version_text: str | None, body: bytes
    ) -> Response:
        header_length = _header_length(scope)
        request = v2_json.parse_infer_request(body, header_length)
        spec = v2_json.v2_model_spec(name, version_text, request.signature_name)
        # What a traffic-rule outcome names this request by: the body's `id` when it is a
        # sane token (the client already holds it), else X-Request-Id or a new one.
        request_id, id_counter = (
            (request.id, None)
            if request.id and REQUEST_ID_RE.fullmatch(request.id)
            else request_id_of(scope)
        )
        result = await self._predict(scope, spec, request, request_id, id_counter)
        outputs = v2_response.ordered_outputs(result.outputs, [o.name for o in request.outputs])
        content, json_length = v2_response.encode_infer_response(
            request, name, result.servable.version, outputs
        )
        headers = [
            (b"x-tfgate-model-version", str(result.servable.version).encode()),
            (b"x-tfgate-request-id", request_id.encode()),
        ]
        if json_length is not None:
            headers += [BINARY_CONTENT, (INFERENCE_HEADER_LENGTH, str(json_length).encode())]
        return 200, content, headers

    async def _predict(
        self,
        scope: Scope,
        spec: ModelSpec,
        request: v2_json.V2InferRequest,
        request_id: str,
        id_counter: int | None,
    ) -> PredictResult:
        """The one call into the service for V2 REST infer: what the request carries to the
        service's resolve step (X-Tfgate-Routing-Key for traffic rules) goes here."""
        deadline = (
            asyncio.get_running_loop().time() + self.timeout_seconds
            if self.timeout_seconds
            else None
        )
        budget = request_budget(self.max_tensor_bytes)
        return await self.service.predict(
            spec,
            lambda signature: v2_json.decode_inputs(request, signature, spec.name, budget),
            output_filter=[o.name for o in request.outputs],
            deadline=deadline,
            entrypoint=Entrypoint.REST,
            cache_control=header(scope, b"cache-control"),
            api=V2_INFER_API,
            routing_key=routing_key_of(scope),
            request_id=request_id,
            id_counter=id_counter,
        )


def _header_length(scope: Scope) -> int | None:
    text = header(scope, INFERENCE_HEADER_LENGTH)
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise invalid_argument(f"Inference-Header-Content-Length {text!r} is not a byte count")
    return int(text)
