"""`tfgate publish` and `tfgate sync`: model sync from the command line.

- publish: a training pipeline's last step; uploads a version, MD5SUMS last (sync/manifest.py).
- sync: the same passes the server runs (sync/sync_pass.py), once (`--once`) or as a loop, for
  a sidecar or a cron job. Returns exit codes; app/__main__.py exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from app.settings import model_config
from app.settings.settings import SettingsError, load_settings
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
    parser = argparse.ArgumentParser(
        prog="tfgate publish",
        description="Upload LOCAL_VERSION_DIR to REMOTE_VERSION_URL (e.g. s3://b/models/m/3), "
        "writing its MD5SUMS manifest last.",
    )
    parser.add_argument("local_version_dir")
    parser.add_argument("remote_version_url")
    parser.add_argument("--endpoint_url", default=os.environ.get("AWS_ENDPOINT_URL", ""))
    parser.add_argument("--region_name", default="")
    parser.add_argument("--endpoints", default="", help="webhdfs: HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--user", default="", help="webhdfs/hdfs user name")
    parser.add_argument("--timeout_seconds", type=float, default=60.0)
    args = parser.parse_args(list(argv))
    options = SourceOptions(
        url=args.remote_version_url,
        timeout_seconds=args.timeout_seconds,
        endpoints=tuple(e for e in args.endpoints.split(",") if e),
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


def _sync_configs(argv: list[str]) -> list[SyncConfig]:
    settings = load_settings(argv)
    if settings.model_config_file:
        models = model_config.load_model_server_config(settings.model_config_file)
    else:
        models = [model_config.single_model_config(settings.model_name, settings.model_base_path)]
    configs = load_sync_configs(settings.config, {m.name: m.base_path for m in models})
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
    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(SYNC_USAGE)
        return 0
    once = "--once" in args
    names = {a.partition("=")[2] for a in args if a.startswith("--model=")}
    args = [a for a in args if a != "--once" and not a.startswith("--model=")]
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        configs = [c for c in _sync_configs(args) if not names or c.model in names]
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
