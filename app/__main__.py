"""Command-line entry points; the only place that exits.

- `tensorflow_model_server [flags]`: TF Serving's binary, same flags and startup errors.
- `tfgate serve [flags]` (the same server, plus `--config`; with no model flags it builds and
  serves a demo model), `tfgate inspect DIR`, and the subcommands later issues add.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from app import __version__
from app.core.errors import STARTUP_FAILURE_EXIT_STATUS
from app.settings.flags import FLAGS
from app.settings.settings import ConfigFileError, Settings, SettingsError, load_settings

DEMO_MODEL_NAME = "half_plus_two"


def usage() -> str:
    lines = ["usage: tensorflow_model_server", "Flags:"]
    for flag in FLAGS:
        default = str(flag.default).lower() if flag.kind is bool else repr(flag.default)
        kind = flag.kind.__name__.replace("str", "string")
        note = " (ignored by tfgate)" if flag.ignored else ""
        lines.append(f"\t--{flag.name}={default}\t{kind}\t{flag.help}{note}")
    return "\n".join(lines)


def tensorflow_version() -> str:
    """The installed TF's version, read from its package metadata (importing TF would load
    its whole runtime just to print a line)."""
    try:
        return importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def configure_logging(settings: Settings) -> None:
    level = settings.tensorflow_model_server_log_level.upper()
    if settings.log_format == "json":
        from app.ops.logs import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
        )


def serve(argv: Sequence[str]) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        if not isinstance(exc, ConfigFileError):  # the flags were wrong: show them
            print(usage(), file=sys.stderr)
        return STARTUP_FAILURE_EXIT_STATUS
    if settings.version:
        print(f"TensorFlow ModelServer: tfgate-{__version__}")
        print(f"TensorFlow Library: {tensorflow_version()}")
        return 0
    configure_logging(settings)
    log = logging.getLogger("tfgate")
    for arg in settings.unknown_args:
        print(f"unknown argument: {arg}\n{usage()}", file=sys.stderr)
    for name in settings.ignored_flags:
        log.warning("--%s has no effect in tfgate; ignored", name)
    for warning in settings.warnings:
        log.warning("%s", warning)
    from app.main import run

    try:
        import uvloop

        return uvloop.run(run(settings))
    except ImportError:
        return asyncio.run(run(settings))


def model_server_main() -> None:
    sys.exit(serve(sys.argv[1:]))


def demo_base_path() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "tfgate", "demo", DEMO_MODEL_NAME)


def ensure_demo_model(base_path: str) -> None:
    """Build the demo SavedModel on first run (in a child process: this one stays TF-free)."""
    if os.path.isdir(os.path.join(base_path, "1")):
        return
    print(f"Building the demo model {DEMO_MODEL_NAME} in {base_path} ...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "workers.example_models", DEMO_MODEL_NAME, base_path],
        check=True,
    )


def tfgate_serve(argv: list[str]) -> int:
    has_model = any(
        a.lstrip("-").split("=", 1)[0] in ("model_base_path", "model_config_file", "config")
        for a in argv
    )
    if not has_model:
        base_path = demo_base_path()
        ensure_demo_model(base_path)
        argv = [
            f"--model_name={DEMO_MODEL_NAME}",
            f"--model_base_path={base_path}",
            "--rest_api_port=8501",
            *argv,
        ]
    return serve(argv)


TFGATE_USAGE = """usage: tfgate COMMAND [args]

commands:
  serve [flags]        run the server (tensorflow_model_server's flags, plus --config);
                       with no model flags, builds and serves a demo model on :8501/:8500
  inspect DIR [...]    show a SavedModel's tags and signatures; --run --inputs JSON to
                       run one prediction in-process
  bench suite|load|micro [...]
                       benchmarks (docs/benchmarks.md): `tfgate bench suite` runs them all
  publish LOCAL_VERSION_DIR REMOTE_VERSION_URL [--endpoint_url URL]
                       upload a model version (s3://, webhdfs://, file://), MD5SUMS last
  sync [--once] --config tfgate.toml [--model=NAME]
                       model sync from the command line (docs/model-sync.md)
"""


def tfgate_main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(TFGATE_USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "serve":
        sys.exit(tfgate_serve(rest))
    if command == "inspect":
        # The inspector imports TensorFlow: run it as the worker-side tool it is.
        os.execv(sys.executable, [sys.executable, "-m", "workers.inspect", *rest])
    if command == "bench":
        from bench.cli import main as bench_main

        sys.exit(bench_main(rest))
    if command in ("publish", "sync"):
        from app.sync import cli as sync_cli

        sys.exit(sync_cli.publish_main(rest) if command == "publish" else sync_cli.sync_main(rest))
    print(f"tfgate: unknown command {command!r}\n\n{TFGATE_USAGE}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    tfgate_main()
