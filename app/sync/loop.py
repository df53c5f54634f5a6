"""The server side of model sync (its `[models.NAME.sync]` tables: sync/config.py):
one loop per model that runs `model_sync.sync_once()` every poll_seconds (retrying failures
with exponential backoff and jitter), and what the passes report: status for the admin
listing, metrics, webhook.

Lifecycle position: main.py starts ModelSync before the initial model wait (a model whose
only source is remote becomes available) and closes it on shutdown; ServerCore calls
update() on every model config reload (before the reload waits for new models), hears of
every finished pass through `on_pass` (and has discovery look at the base path at once) and
asks for a pass now with sync_now() (admin "sync now"). Passes run in daemon threads;
status and metrics are only touched on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from app.core.errors import Code, ServingError
from app.ops.metric_types import Counter, Gauge
from app.ops.metrics import Metrics
from app.sync.sync_pass import PassResult, SyncConfig, VersionFailure, sync_once

log = logging.getLogger("tfgate.model_sync")

WEBHOOK_TIMEOUT_SECONDS = 5.0
CLOSE_WAIT_SECONDS = 5.0

# --- decisions ---


def backoff_seconds(failures: int, initial: float, maximum: float, jitter: float) -> float:
    """Wait before retry number `failures` (>= 1): exponential, capped, with 'equal jitter'
    (half fixed, half random from `jitter` in [0, 1)) so many servers retrying one store
    spread out, yet none comes back at once."""
    base = min(maximum, initial * 2.0 ** min(max(failures - 1, 0), 60))
    return base / 2 + base / 2 * jitter


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


@dataclasses.dataclass
class SyncStatus:
    """What the admin listing shows about one model's sync."""

    config: SyncConfig
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: dict[str, Any] | None = None
    consecutive_failures: int = 0
    versions_synced: list[int] = dataclasses.field(default_factory=list)
    remote_missing: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.config.source.display_url(),
            "poll_seconds": self.config.poll_seconds,
            "last_attempt": _iso(self.last_attempt_at),
            "last_success": _iso(self.last_success_at),
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "versions_synced": self.versions_synced,
            "remote_missing": self.remote_missing,
        }


def webhook_payload(event: str, result: PassResult, status: SyncStatus) -> dict[str, Any]:
    return {
        "event": event,  # model_sync_failed | model_sync_recovered
        "model": result.model,
        "source": result.source,
        "endpoint": result.endpoint,
        "consecutive_failures": status.consecutive_failures,
        "failures": [dataclasses.asdict(f) for f in result.failures],
        "time": _iso(time.time()),
    }


def post_webhook(url: str, payload: dict[str, Any]) -> None:
    """POST the JSON payload; a failing webhook is logged, never raised (alerting must not
    break syncing). Blocking: call from a thread."""
    import httpx

    try:
        response = httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_SECONDS)
        response.raise_for_status()
    except Exception as exc:
        log.warning("Model sync webhook %s failed: %s", url, exc)


class WebhookSender:
    """Delivers payloads in order (a 'recovered' never overtakes its 'failed') on one daemon
    thread, so a slow or dead webhook never holds up syncing. Bounded: drops when full."""

    MAX_QUEUED = 100

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(self.MAX_QUEUED)
        self._thread: threading.Thread | None = None

    def send(self, url: str, payload: dict[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sync-webhook", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((url, payload))
        except queue.Full:
            log.warning(
                "Model sync webhook %s is backed up; dropped a %s event", url, payload.get("event")
            )

    def _run(self) -> None:
        while True:
            url, payload = self._queue.get()
            post_webhook(url, payload)


class SyncMetrics:
    def __init__(self, metrics: Metrics) -> None:
        labels = ("model_name",)
        self.successes = Counter(
            "tfgate_model_sync_successes", "Sync passes in which every version verified.", labels
        )
        self.failures = Counter(
            "tfgate_model_sync_failures",
            "Sync failures (one per failed version or failed pass), by reason.",
            ("model_name", "reason"),
        )
        self.bytes = Counter(
            "tfgate_model_sync_downloaded_bytes", "Bytes downloaded by model sync.", labels
        )
        self.versions = Counter(
            "tfgate_model_sync_versions_installed",
            "Versions downloaded, verified by md5 and renamed into the base path.",
            labels,
        )
        self.last_success = Gauge(
            "tfgate_model_sync_last_success_timestamp_seconds",
            "Unix time of the last sync pass in which every version verified.",
            labels,
        )
        for metric in (self.successes, self.failures, self.bytes, self.versions, self.last_success):
            metrics.add(metric)


# --- the loops ---


async def run_in_daemon_thread(fn: Callable[[], PassResult]) -> PassResult:
    """Like asyncio.to_thread, but on a daemon thread: a pass blocked in a network call
    (up to timeout_seconds) must not hold up interpreter exit after shutdown."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[PassResult] = loop.create_future()

    def settle(value: PassResult | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def target() -> None:
        try:
            value, error = fn(), None
        except BaseException as exc:
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=target, name="model-sync", daemon=True).start()
    return await future


async def _wait_stopped(tasks: list[asyncio.Task[None] | None]) -> None:
    pending = [t for t in tasks if t is not None]
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_WAIT_SECONDS)


def _abort(name: str, waiters: list[asyncio.Future[PassResult]]) -> None:
    """Answer the sync_now callers of a model whose sync stopped (reload, shutdown)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(
                ServingError(Code.ABORTED, f"The sync of model {name} was stopped")
            )


class ModelSync:
    """One sync loop per configured model. start() / update() / close() from the event loop."""

    def __init__(
        self,
        configs: list[SyncConfig],
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.configs = {c.model: c for c in configs}
        self.status = {c.model: SyncStatus(c) for c in configs}
        self.metrics = SyncMetrics(metrics) if metrics is not None else None
        self._rng = rng or random.Random()
        self._started = False
        self._closed = False
        # per model: its loop task, and the event its passes poll to stop at the next chunk
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, threading.Event] = {}
        # per model: set by sync_now to end the loop's wait before its next pass; and the
        # callers of sync_now waiting for the pass that starts after their request
        self._wakes: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, list[asyncio.Future[PassResult]]] = {}
        self._webhook = WebhookSender()
        # Told of every finished pass (ServerCore: discovery looks at the base path now).
        self.on_pass: Callable[[PassResult], None] | None = None

    def start(self) -> None:
        self._started = True
        for config in self.configs.values():
            self._start_loop(config)

    async def update(self, configs: list[SyncConfig]) -> None:
        """A model config reload: start the loops of models that are now configured, stop
        those of models that are gone, restart those whose base_path or table changed.

        All bookkeeping happens before the first await, so a reload cancelled while it waits
        for the old loops still leaves every configured model with a running loop."""
        if self._closed:
            return
        wanted = {c.model: c for c in configs}
        gone = [name for name, config in self.configs.items() if wanted.get(name) != config]
        stopping = [self._signal_stop(name) for name in gone]
        for name in gone:
            del self.configs[name], self.status[name]
        for name, config in wanted.items():
            if name in self.configs:
                continue
            log.info("Model %s: sync from %s starts", name, config.source.display_url())
            self.configs[name] = config
            self.status[name] = SyncStatus(config)
            if self._started:
                self._start_loop(config)
        await _wait_stopped(stopping)

    async def close(self) -> None:
        """Stop every loop and every pass in flight: transfers stop at their next chunk, and
        their partial directories are removed by the pass itself (or by the next start).
        The status stays readable; update() does nothing afterwards."""
        self._closed = True
        stopping = [self._signal_stop(name) for name in list(self._stops)]
        await _wait_stopped(stopping)

    def _start_loop(self, config: SyncConfig) -> None:
        # discovery would report a missing base path until the first pass made it
        try:
            os.makedirs(config.base_path, exist_ok=True)
        except OSError as exc:  # the pass reports it (and retries) like any failure
            log.error("Model %s: cannot create %s: %s", config.model, config.base_path, exc)
        self._stops[config.model] = threading.Event()
        self._wakes[config.model] = asyncio.Event()
        self._tasks[config.model] = asyncio.create_task(
            self._loop(config), name=f"model-sync-{config.model}"
        )

    def _signal_stop(self, name: str) -> asyncio.Task[None] | None:
        """Tell the model's pass to stop at its next chunk and cancel its loop; returns the
        loop task to wait for."""
        stop, task = self._stops.pop(name, None), self._tasks.pop(name, None)
        self._wakes.pop(name, None)
        if stop is not None:
            stop.set()
        if task is not None:
            task.cancel()
        _abort(name, self._waiters.pop(name, []))
        return task

    async def sync_now(self, name: str, wait_seconds: float) -> PassResult:
        """Start the model's next pass now (ending its wait for poll_seconds or a backoff;
        a pass in flight finishes first) and return that pass's result. Waiting longer
        than `wait_seconds` answers DEADLINE_EXCEEDED; the pass goes on."""
        wake = self._wakes.get(name)
        if wake is None or self._closed:
            raise ServingError(
                Code.FAILED_PRECONDITION, f"The sync of model {name} is not running"
            )
        waiter: asyncio.Future[PassResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(waiter)
        wake.set()
        try:
            async with asyncio.timeout(wait_seconds):
                return await asyncio.shield(waiter)
        except TimeoutError:
            raise ServingError(
                Code.DEADLINE_EXCEEDED,
                f"The sync pass of model {name} did not finish within {wait_seconds:g} s; "
                "it goes on",
            ) from None
        finally:
            waiter.cancel()  # nobody reads it any more (a no-op once it has its answer)
            if waiter in self._waiters.get(name, ()):
                self._waiters[name].remove(waiter)

    def describe(self, name: str) -> dict[str, Any]:
        """The admin listing's per-model extras: {'sync': {...}} for synced models."""
        status = self.status.get(name)
        return {"sync": status.describe()} if status is not None else {}

    async def run_pass(self, name: str) -> PassResult:
        config = self.configs[name]
        stop = self._stops.setdefault(name, threading.Event())

        def one_pass() -> PassResult:
            try:
                return sync_once(config, stop.is_set, self._rng)
            except Exception as exc:  # a bug must not end the loop
                log.exception("Model %s: sync pass crashed", name)
                result = PassResult(name, config.source.display_url())
                result.failures.append(VersionFailure(None, "internal", repr(exc)))
                return result

        result = await run_in_daemon_thread(one_pass)
        self.record(result)
        if self.on_pass is not None and name in self.configs:
            try:
                self.on_pass(result)
            except Exception:  # a failing listener must not end the sync loop
                log.exception("Model %s: handling the finished sync pass failed", name)
        return result

    def record(self, result: PassResult) -> None:
        """Fold one pass into status + metrics; fire the webhook. Event loop only."""
        status, config = self.status.get(result.model), self.configs.get(result.model)
        if status is None or config is None:  # the model left the config during the pass
            return
        now = time.time()
        status.last_attempt_at = now
        if result.locked_out or result.cancelled:
            return
        status.versions_synced = sorted(set(status.versions_synced) | set(result.downloaded))
        if result.remote_missing and not status.remote_missing:
            # Not a failure (a model may be configured before its first version is
            # published), but a misspelt bucket or prefix looks the same: say so once.
            log.warning(
                "Model %s: %s does not exist (no such bucket or prefix); nothing to sync "
                "until a version is published there",
                result.model,
                result.endpoint or result.source,
            )
        elif status.remote_missing and not result.remote_missing:
            log.info("Model %s: %s exists now", result.model, result.endpoint or result.source)
        status.remote_missing = result.remote_missing
        if self.metrics is not None:
            self.metrics.bytes.inc(result.model, amount=result.bytes_downloaded)
            if result.downloaded:
                self.metrics.versions.inc(result.model, amount=len(result.downloaded))
        event = None
        if result.ok:
            event = "model_sync_recovered" if status.consecutive_failures else None
            status.consecutive_failures = 0
            status.last_success_at = now
            if self.metrics is not None:
                self.metrics.successes.inc(result.model)
                self.metrics.last_success.set(result.model, value=now)
        else:
            event = "model_sync_failed"
            status.consecutive_failures += 1
            first = result.failures[0]
            status.last_error = {**dataclasses.asdict(first), "at": _iso(now)}
            if self.metrics is not None:
                for failure in result.failures:
                    self.metrics.failures.inc(result.model, failure.reason)
        if event and config.webhook_url:
            self._webhook.send(config.webhook_url, webhook_payload(event, result, status))

    async def _loop(self, config: SyncConfig) -> None:
        """Bounded and cancellable: one pass, then poll_seconds (or a backoff after a
        failure) of sleep; never ends on an error."""
        status = self.status[config.model]
        stop = self._stops[config.model]
        wake = self._wakes[config.model]
        while not stop.is_set():
            wake.clear()  # sync_now calls from here on wait for this pass
            waiters, self._waiters[config.model] = self._waiters.get(config.model, []), []
            try:
                result = await self.run_pass(config.model)
            except asyncio.CancelledError:
                _abort(config.model, waiters)
                raise
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)
            if result.cancelled:
                return
            delay = config.poll_seconds
            if not result.ok and not result.locked_out:
                delay = backoff_seconds(
                    status.consecutive_failures,
                    config.retry_initial_seconds,
                    config.retry_max_seconds,
                    self._rng.random(),
                )
                log.error(
                    "Model %s: sync failed %d time(s) in a row; retrying in %.1fs",
                    config.model,
                    status.consecutive_failures,
                    delay,
                )
            # the wait before the next pass, cut short by sync_now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
