"""Polls --model_config_file every --model_config_file_poll_wait_seconds and applies a
changed file through ServerCore.apply_model_config (full replacement, as TF Serving does).

A file that fails to parse, or a config the server refuses (a label on a version that is not
AVAILABLE yet, a platform change...), is logged and the running config stays in force. As
TF Serving's poller, the next poll tries the same file again: a refusal can pass later (the
labelled version has loaded meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.core.errors import ServingError
from app.settings import model_config
from app.settings.model_config import ModelConfig

log = logging.getLogger("tfgate.config_watch")


class ConfigWatcher:
    def __init__(
        self,
        path: str,
        poll_wait_seconds: float,
        apply: Callable[[list[ModelConfig]], Awaitable[None]],
    ) -> None:
        self.path = path
        self.poll_wait_seconds = poll_wait_seconds
        self.apply = apply
        self._last_text: str | None = None
        self._task: asyncio.Task[None] | None = None

    def remember(self, text: str) -> None:
        self._last_text = text

    def start(self) -> None:
        if self.poll_wait_seconds > 0:
            self._task = asyncio.create_task(self._poll(), name="config-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check_once(self) -> bool:
        """Apply the file if its text differs from the last one applied; True when a new
        config was applied. A refused apply raises, and is tried again next time."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            log.error("Cannot read model config file %s: %s", self.path, exc.strerror)
            return False
        if text == self._last_text:
            return False
        try:
            configs = model_config.parse_model_server_config(text)
        except model_config.ConfigError as exc:
            log.error("Not applying %s: %s", self.path, exc)
            return False
        log.info("Model config file %s changed: applying %d model(s)", self.path, len(configs))
        await self.apply(configs)
        self._last_text = text
        return True

    async def _poll(self) -> None:
        """Bounded (one apply per poll) and cancellable; a failure is logged and the file
        is tried again at the next poll."""
        while True:
            await asyncio.sleep(self.poll_wait_seconds)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except ServingError as exc:  # refused, as TF Serving would refuse it
                log.error(
                    "Not applying %s: %s; trying again in %gs",
                    self.path,
                    exc.message,
                    self.poll_wait_seconds,
                )
            except Exception:
                log.exception(
                    "Applying the model config file failed; trying again in %gs",
                    self.poll_wait_seconds,
                )
