"""Optional authentication for inference: API keys with per-key model allow-lists.

Off unless the TOML config names a keys file (`[auth] api_keys_file`). rest/api.py and the
gRPC servicers call `check(credential, model)` before the request path; a key travels as
`Authorization: Bearer <key>` or `x-api-key: <key>` (REST headers, gRPC metadata). Keys
are compared in constant time and never logged. Health and metrics endpoints stay open.

Keys file: one key per line, `<key> <model>[,<model>...]` or `<key> *` for every model;
`#` starts a comment.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from app.core.errors import Code, ServingError


class InferenceAuth:
    def __init__(self, keys: dict[str, frozenset[str] | None]) -> None:
        # key -> allowed models (None: every model)
        self._keys = [(k.encode(), models) for k, models in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @classmethod
    def disabled(cls) -> InferenceAuth:
        return cls({})

    @classmethod
    def from_file(cls, path: str) -> InferenceAuth:
        try:
            with open(path, encoding="utf-8") as f:
                return cls(parse_keys(f, path))
        except OSError as exc:
            raise ServingError(
                Code.FAILED_PRECONDITION, f"Cannot read API keys file {path}: {exc.strerror}"
            ) from None

    def check(self, credential: str | None, model: str) -> None:
        """Raise UNAUTHENTICATED without a key, PERMISSION_DENIED for a wrong key or a model
        outside the key's allow-list."""
        if not self._keys:
            return
        if not credential:
            raise ServingError(Code.UNAUTHENTICATED, "Missing API key")
        candidate = credential.encode()
        allowed: frozenset[str] | bool | None = False
        for key, models in self._keys:  # no early exit: timing says nothing about which key
            if hmac.compare_digest(candidate, key):
                allowed = models
        if allowed is False:
            raise ServingError(Code.PERMISSION_DENIED, "Invalid API key")
        if allowed is not None and model not in allowed:
            raise ServingError(
                Code.PERMISSION_DENIED, f"API key is not allowed to use model {model}"
            )


def credential_from(authorization: str | None, api_key: str | None) -> str | None:
    """The key from `x-api-key`, else from `Authorization: Bearer <key>`."""
    if api_key:
        return api_key.strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def parse_keys(lines: Iterable[str], source: str) -> dict[str, frozenset[str] | None]:
    keys: dict[str, frozenset[str] | None] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"{source}:{number}: expected '<key> <model>[,<model>...]' or '<key> *'",
            )
        key, models = parts
        keys[key] = None if models == "*" else frozenset(m for m in models.split(",") if m)
    return keys
