"""The arguments of `tfgate publish` and `tfgate sync` -> typed values, environment included
(AWS_ENDPOINT_URL), so that app/sync/cli.py reads neither argv nor the environment itself.

`tfgate sync` takes the server's own flags and `--config` (its base paths and sync tables
are the server's), plus `--once` and `--model=NAME`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence

from app.settings.settings import Settings, load_settings

# Honoured for `tfgate publish --endpoint_url`, as AWS's own tools do.
AWS_ENDPOINT_URL_ENV = "AWS_ENDPOINT_URL"


@dataclasses.dataclass(frozen=True)
class PublishArgs:
    local_version_dir: str
    remote_version_url: str
    endpoint_url: str = ""
    region_name: str = ""
    endpoints: tuple[str, ...] = ()  # webhdfs HOST:PORT alternatives
    user: str = ""
    timeout_seconds: float = 60.0


def parse_publish_args(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> PublishArgs:
    """argparse's usage and exit status 2 on bad arguments, as before."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="tfgate publish",
        description="Upload LOCAL_VERSION_DIR to REMOTE_VERSION_URL (e.g. s3://b/models/m/3), "
        "writing its MD5SUMS manifest last.",
    )
    parser.add_argument("local_version_dir")
    parser.add_argument("remote_version_url")
    parser.add_argument("--endpoint_url", default=environ.get(AWS_ENDPOINT_URL_ENV, ""))
    parser.add_argument("--region_name", default="")
    parser.add_argument("--endpoints", default="", help="webhdfs: HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--user", default="", help="webhdfs/hdfs user name")
    parser.add_argument("--timeout_seconds", type=float, default=60.0)
    args = parser.parse_args(list(argv))
    return PublishArgs(
        local_version_dir=args.local_version_dir,
        remote_version_url=args.remote_version_url,
        endpoint_url=args.endpoint_url,
        region_name=args.region_name,
        endpoints=tuple(e for e in args.endpoints.split(",") if e),
        user=args.user,
        timeout_seconds=args.timeout_seconds,
    )


@dataclasses.dataclass(frozen=True)
class SyncArgs:
    help: bool  # -h / --help: print the usage, nothing else is parsed
    once: bool = False
    models: frozenset[str] = frozenset()  # --model=NAME...; empty: every synced model
    settings: Settings | None = None


def parse_sync_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> SyncArgs:
    """Raises SettingsError (or ConfigFileError) for bad flags or a bad config file."""
    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        return SyncArgs(help=True)
    names = frozenset(a.partition("=")[2] for a in args if a.startswith("--model="))
    rest = [a for a in args if a != "--once" and not a.startswith("--model=")]
    return SyncArgs(
        help=False,
        once="--once" in args,
        models=names,
        settings=load_settings(rest, environ),
    )
