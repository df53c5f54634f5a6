"""`tfgate publish` and `tfgate sync`: model sync from the command line.

- publish: a training pipeline's last step; uploads a version, MD5SUMS last (sync/manifest.py).
- sync: the same passes the server runs (sync/sync_pass.py), once (`--once`) or as a loop, for
  a sidecar or a cron job. Returns exit codes; app/__main__.py exits. Their arguments (and
  AWS_ENDPOINT_URL) are parsed by app/settings/commands.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from app.settings import model_config
from app.settings.commands import parse_publish_args, parse_sync_args
from app.settings.settings import Settings, SettingsError
from app.sync.config import load_sync_configs
from app.sync.loop import ModelSync, SyncStatus, post_webhook, webhook_payload
from app.sync.manifest import ManifestError, publish
from app.sync.storage import SourceOptions, StorageError, check_source
from app.sync.sync_pass import PassResult, SyncConfig, sync_once

SYNC_USAGE = """usage: tfgate sync [--once] --config tfgate.toml [--model=NAME]... [model flags]

Runs model sync for every model with a [models.NAME.sync] table (or only the --model=NAME ones).
Base paths come from --model_config_file or --model_name/--model_base_path, as flags or in
the config's [server] table. --once: one pass, exit status 1 if any failed; otherwise loop
until SIGTERM/SIGINT."""


def publish_main(argv: Sequence[str]) -> int:
    args = parse_publish_args(argv)
    options = SourceOptions(
        url=args.remote_version_url,
        timeout_seconds=args.timeout_seconds,
        endpoints=args.endpoints,
        endpoint_url=args.endpoint_url,
        region_name=args.region_name,
        user=args.user,
    )
    try:
        if not os.path.isdir(args.local_version_dir):
            raise ValueError(f"{args.local_version_dir} is not a directory")
        check_source(options)
        entries = publish(args.local_version_dir, args.remote_version_url, options)
    except (ValueError, ManifestError, StorageError) as exc:
        print(f"tfgate publish: {exc}", file=sys.stderr)
        return 1
    print(f"Published {len(entries)} file(s) to {args.remote_version_url} (MD5SUMS last)")
    return 0


def _sync_configs(settings: Settings) -> list[SyncConfig]:
    if settings.model_config_file:
        models = model_config.load_model_server_config(settings.model_config_file)
    else:
        models = [model_config.single_model_config(settings.model_name, settings.model_base_path)]
    configs = load_sync_configs(
        settings.sync_tables, {m.name: m.base_path for m in models}, settings.file.path
    )
    if not configs:
        raise SettingsError("No model has a [models.NAME.sync] table in the --config file")
    return configs


def _summary(result: PassResult) -> str:
    state = "ok" if result.ok else "FAILED"
    line = (
        f"{result.model}: {state} from {result.endpoint or result.source} in "
        f"{result.seconds:.1f}s; downloaded {result.downloaded}, unchanged {result.unchanged}, "
        f"no manifest {result.no_manifest}, deleted {result.deleted}, "
        f"{result.bytes_downloaded} bytes"
    )
    for failure in result.failures:
        line += f"\n  version {failure.version}: {failure.reason}: {failure.message}"
    return line


def sync_main(argv: Sequence[str]) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = parse_sync_args(argv)
        if args.help or args.settings is None:
            print(SYNC_USAGE)
            return 0
        once, names = args.once, args.models
        for warning in args.settings.warnings:
            logging.getLogger("tfgate").warning("%s", warning)
        configs = [c for c in _sync_configs(args.settings) if not names or c.model in names]
        for unknown in names - {c.model for c in configs}:
            raise SettingsError(f"--model={unknown}: no such model with a sync table")
    except (SettingsError, model_config.ConfigError) as exc:
        print(f"tfgate sync: {exc}\n\n{SYNC_USAGE}", file=sys.stderr)
        return 1
    if not once:
        return asyncio.run(_sync_forever(configs))
    failed = False
    for config in configs:
        result = sync_once(config)
        print(_summary(result))
        if not result.ok:
            failed = True
            if config.webhook_url:
                status = SyncStatus(config, consecutive_failures=1)
                payload = webhook_payload("model_sync_failed", result, status)
                post_webhook(config.webhook_url, payload)
    return 1 if failed else 0


async def _sync_forever(configs: list[SyncConfig]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    syncer = ModelSync(configs)
    syncer.start()
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await syncer.close()
    return 0
