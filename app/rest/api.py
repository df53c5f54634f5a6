"""REST front: TF Serving's /v1 API, routed on the raw path, plus tfgate's own endpoints.

Data path position: HTTP request -> rest/api.py (route, read body) -> codec (decode) ->
service -> codec (encode) -> HTTP response. TF Serving's routes are matched with its two
regexes on the still-percent-encoded path (names and labels are decoded after the match,
so `%2F` is legal inside a name), which a path-templated router cannot do; they are served
by a small ASGI layer that also keeps per-request overhead low. Everything else (health,
metrics, admin) goes to the FastAPI app built by main.py.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import time
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from app.codec import example as codec_example
from app.codec import predict_response
from app.codec import status as codec_status
from app.codec import tensor_json as codec
from app.codec.tensor import request_budget
from app.core.errors import Code, ServingError
from app.core.request_ids import new_request_id
from app.core.types import INT64_MAX, ModelSpec
from app.rest.edge import body_too_large_text, send_whole
from app.serving.auth import InferenceAuth, credential_from
from app.serving.observation import MAX_ROUTING_KEY_CHARS
from app.serving.service import Entrypoint, ServingService

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# TF Serving's http_rest_api_handler.cc regexes (RE2 FullMatch, case-insensitive).
PREDICTION_API_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:"
    r"(classify|regress|predict)"
)
MODEL_STATUS_API_RE = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
V1_PREFIX_RE = re.compile(r"(?i)/v1/")
# Gzip request bodies are inflated up to TF Serving's limit.
MAX_UNCOMPRESSED_BYTES = 100 << 20

JSON_HEADERS = [(b"content-type", b"application/json")]
CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, GET"),
    (b"access-control-allow-headers", b"Content-Type"),
]
ORIGIN_RE = re.compile(r"https?://.*")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
CLOSE_HEADER = (b"connection", b"close")
access_log = logging.getLogger("tfgate.access")
log = logging.getLogger("tfgate.rest")


class PayloadTooLarge(ServingError):
    """A body over the size limit: HTTP 413, which TF Serving's code table has no code for."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.RESOURCE_EXHAUSTED, message)

    @property
    def http_status(self) -> int:
        return 413


class TfServingRestApi:
    """ASGI app: TF Serving's /v1 routes here; every other path goes to `fallback`."""

    def __init__(
        self,
        service: ServingService,
        fallback: ASGIApp,
        *,
        timeout_ms: int,
        enable_cors: bool,
        max_body_bytes: int,
        auth: InferenceAuth | None = None,
        access_log: bool = False,
        own_prefixes: tuple[str, ...] = ("/v1/admin",),
        max_tensor_bytes: int = 0,
        v2_app: ASGIApp | None = None,
    ) -> None:
        # rest/v2_routes.py's V2 (Open Inference Protocol) app, for every /v2 path.
        self.v2_app = v2_app
        self.service = service
        self.auth = auth or InferenceAuth.disabled()
        self.access_log = access_log
        self.fallback = fallback
        self.timeout_seconds = timeout_ms / 1000 if timeout_ms > 0 else None
        self.enable_cors = enable_cors
        self.max_body_bytes = max_body_bytes
        self.own_prefixes = tuple(p.lower() for p in own_prefixes)
        # the bytes one request's decoded tensors may take; 0: unbounded (unit tests)
        self.max_tensor_bytes = max_tensor_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        lowered = path.lower()
        if self.v2_app is not None and (path == "/v2" or path.startswith("/v2/")):
            await self.v2_app(scope, receive, send)
            return
        if not V1_PREFIX_RE.match(path) or lowered.startswith(self.own_prefixes):
            await self.fallback(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, id_counter = request_id_of(scope)
        status, body, extra = await self._handle(scope, receive, path, request_id, id_counter)
        headers = list(JSON_HEADERS)
        headers.append((b"x-request-id", request_id.encode()))
        headers.extend(extra)
        if self.enable_cors:
            headers.extend(CORS_HEADERS)
        if not send_whole(send, status, headers, body):  # uvicorn's cycle: one write
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        if self.access_log:
            latency_ms = round((time.perf_counter() - started) * 1000, 3)
            access_log.info(
                "%s %s %d %.3fms id=%s",
                scope["method"],
                path,
                status,
                latency_ms,
                request_id,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "latency_ms": latency_ms,
                    "entrypoint": "REST",
                },
            )

    async def _handle(
        self, scope: Scope, receive: Receive, path: str, request_id: str, id_counter: int | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        method = scope["method"]
        try:
            if method == "OPTIONS":
                return self._preflight(scope)
            if method == "POST":
                match = PREDICTION_API_RE.fullmatch(path)
                if match:
                    self._authorize(scope, match.group(1))
                    body = await read_body(scope, receive, self.max_body_bytes)
                    answer, version = await self._post(match, body, scope, request_id, id_counter)
                    # Which version served (a traffic rule may have chosen it), and the id
                    # an outcome for this request is reported under (docs/experiments.md).
                    served = [
                        (b"x-tfgate-model-version", str(version).encode()),
                        (b"x-tfgate-request-id", request_id.encode()),
                    ]
                    return 200, answer, served
            elif method == "GET":
                match = MODEL_STATUS_API_RE.fullmatch(path)
                if match:
                    if match.group(1):
                        self._authorize(scope, match.group(1))
                    return 200, self._get(match), []
            raise ServingError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        except ServingError as exc:
            # A refused body may still be arriving: close rather than read the rest of it.
            extra = [CLOSE_HEADER] if isinstance(exc, PayloadTooLarge) else []
            return exc.http_status, predict_response.encode_error(exc.message), extra
        except Exception:
            log.exception("REST %s %s failed", method, path)
            return 500, predict_response.encode_error("Internal server error"), []

    def _authorize(self, scope: Scope, raw_name: str) -> None:
        if self.auth.enabled:
            credential = credential_from(
                header(scope, b"authorization"), header(scope, b"x-api-key")
            )
            self.auth.check(credential, urllib.parse.unquote(raw_name))

    def _preflight(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        origin = header(scope, b"origin")
        if origin is None or not ORIGIN_RE.fullmatch(origin):
            raise ServingError(Code.INVALID_ARGUMENT, "Origin header is missing in CORS preflight")
        return 200, b"", []

    async def _post(
        self,
        match: re.Match[str],
        body: bytes,
        scope: Scope,
        request_id: str,
        id_counter: int | None,
    ) -> tuple[bytes, int]:
        """The answer's body and the version that served it."""
        name, version_text, label, verb = match.groups()
        spec = model_spec(name, version_text, label)
        # Cache-Control: no-cache / no-store reach the result cache (docs/cache.md).
        cache_control = header(scope, b"cache-control")
        routing = {
            "routing_key": routing_key_of(scope),
            "request_id": request_id,
            "id_counter": id_counter,
        }
        deadline = (
            asyncio.get_running_loop().time() + self.timeout_seconds
            if self.timeout_seconds
            else None
        )
        verb = verb.lower()
        if verb == "predict":
            return await self._predict(spec, body, deadline, cache_control, routing)
        examples = codec_example.parse_examples_json(
            body,
            verb,  # type: ignore[arg-type]
            request_budget(self.max_tensor_bytes),
        )
        spec = ModelSpec(spec.name, spec.version, spec.label, examples.signature_name)
        if verb == "classify":
            result = await self.service.classify(
                spec,
                lambda: examples.examples,
                deadline=deadline,
                entrypoint=Entrypoint.REST,
                cache_control=cache_control,
                **routing,
            )
            answer = codec_example.encode_classify_response(result.classes, result.scores)
            return answer, result.servable.version
        regression = await self.service.regress(
            spec,
            lambda: examples.examples,
            deadline=deadline,
            entrypoint=Entrypoint.REST,
            cache_control=cache_control,
            **routing,
        )
        answer = codec_example.encode_regress_response(regression.outputs)
        return answer, regression.servable.version

    async def _predict(
        self,
        spec: ModelSpec,
        body: bytes,
        deadline: float | None,
        cache_control: str | None,
        routing: dict[str, Any],
    ) -> tuple[bytes, int]:
        parsed = codec.parse_predict_json(body)
        spec = ModelSpec(spec.name, spec.version, spec.label, parsed.signature_name)
        result = await self.service.predict(
            spec,
            lambda signature: codec.decode_predict_inputs(
                parsed, signature, request_budget(self.max_tensor_bytes)
            ),
            deadline=deadline,
            entrypoint=Entrypoint.REST,
            cache_control=cache_control,
            **routing,
        )
        answer = predict_response.encode_predict_response(result.outputs, parsed.format)
        return answer, result.servable.version

    def _get(self, match: re.Match[str]) -> bytes:
        name, version_text, label, subresource = match.groups()
        if not name:
            raise ServingError(Code.INVALID_ARGUMENT, "Missing model name in request.")
        spec = model_spec(name, version_text, label)
        if subresource:
            servable, meta_graph = self.service.metadata(spec)
            return codec_status.encode_metadata_json(servable, meta_graph)
        # TF Serving's status lookup only looks at the version; a label returns all versions.
        records = self.service.model_status(spec.name, spec.version)
        return codec_status.encode_status_json(records)


def model_spec(name: str, version_text: str | None, label: str | None) -> ModelSpec:
    decoded_name = urllib.parse.unquote(name, errors="surrogateescape")
    version: int | None = None
    if version_text:
        version = parse_version(version_text)
    decoded_label = urllib.parse.unquote(label, errors="surrogateescape") if label else None
    return ModelSpec(decoded_name, version, decoded_label)


def parse_version(text: str) -> int:
    """absl::SimpleAtoi into int64 of the route's `\\d+`: any number of digits (leading zeros
    included) parses or gets TF Serving's 400; never Python's int() digit limit."""
    digits = text.lstrip("0") or "0"
    if not digits.isascii() or not digits.isdigit() or len(digits) > len(str(INT64_MAX)):
        raise ServingError(Code.INVALID_ARGUMENT, f"Failed to convert version: {text} to numeric.")
    version = int(digits)
    if version > INT64_MAX:
        raise ServingError(Code.INVALID_ARGUMENT, f"Failed to convert version: {text} to numeric.")
    return version


def request_id_of(scope: Scope) -> tuple[str, int | None]:
    """The caller's X-Request-Id when it is a sane token, else a new unique one with its
    counter (core/request_ids.py; None for the caller's)."""
    given = header(scope, b"x-request-id")
    if given and REQUEST_ID_RE.fullmatch(given):
        return given, None
    return new_request_id()


def routing_key_of(scope: Scope) -> str | None:
    """X-Tfgate-Routing-Key: requests with the same key land on the same arm of a traffic
    rule (docs/experiments.md)."""
    key = header(scope, b"x-tfgate-routing-key")
    if key is not None and len(key) > MAX_ROUTING_KEY_CHARS:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            f"X-Tfgate-Routing-Key is longer than {MAX_ROUTING_KEY_CHARS} characters",
        )
    return key or None


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (latin-1), None when absent."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(scope: Scope, receive: Receive, max_body_bytes: int) -> bytes:
    """The request body, gunzipped when Content-Encoding says gzip; bounded in size."""
    chunks = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ServingError(Code.CANCELLED, "Client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body_bytes:
            raise PayloadTooLarge(body_too_large_text(max_body_bytes))
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    encoding = header(scope, b"content-encoding")
    if encoding and "gzip" in encoding.lower():
        body = gunzip(body)
    return body


def gunzip(body: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_UNCOMPRESSED_BYTES + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ServingError(
            Code.INVALID_ARGUMENT, f"Failed to decompress gzip body: {exc}"
        ) from None
    if len(out) > MAX_UNCOMPRESSED_BYTES or inflater.unconsumed_tail:
        raise PayloadTooLarge("Uncompressed request body exceeds the 100 MB limit")
    return out
