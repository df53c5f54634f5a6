"""The admin API's bearer tokens: who may pin, load, unload, reload, sync and change traffic.

Data path position: every admin request, on both transports (rest/admin_routes.py,
rpc/admin.py) and the dashboard's data routes, passes `AdminTokens.check` before admin/api.py
runs anything; the inference auth (serving/auth.py) is separate.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from app.core.errors import Code, ServingError
from app.settings.config_file import ADMIN_TOKENS_ENV


class AdminTokens:
    """Bearer tokens for the admin API, from a file (one per line) and/or the
    TFGATE_ADMIN_TOKENS env var (comma-separated, read by settings). Compared in constant
    time; never logged."""

    ENV_VAR = ADMIN_TOKENS_ENV

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    @classmethod
    def load(cls, tokens_file: str | None, env_tokens: Sequence[str] = ()) -> AdminTokens:
        """`env_tokens`: Settings.admin_env_tokens; the file's tokens are added to them."""
        tokens = list(env_tokens)
        if tokens_file:
            try:
                with open(tokens_file, encoding="utf-8") as f:
                    tokens += [line.strip() for line in f if line.strip()]
            except OSError as exc:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Cannot read admin tokens file {tokens_file}: {exc.strerror}",
                ) from None
        return cls(tokens)

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None) -> None:
        """Raise UNAUTHENTICATED without a bearer token, PERMISSION_DENIED for a wrong one."""
        if not self._tokens:
            raise ServingError(
                Code.UNAVAILABLE,
                "The admin API is disabled: no admin tokens are configured "
                f"([admin] tokens_file or {self.ENV_VAR})",
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServingError(Code.UNAUTHENTICATED, "Missing bearer token for the admin API")
        candidate = token.strip().encode()
        # Compare against every token (no early exit) so timing says nothing about which.
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(candidate, known)
        if not matched:
            raise ServingError(Code.PERMISSION_DENIED, "Invalid admin token")
