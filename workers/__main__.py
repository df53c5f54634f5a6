"""Worker process entry: `python -m workers --request-fd N --reply-fd N ...`.

Spawned by the gateway's worker pool (app/runtime/pool.py), never by hand; see workers/loop.py.
"""

from __future__ import annotations

import argparse
import base64
import logging
import signal
import sys

from workers import loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--owner-pid", type=int, required=True)
    parser.add_argument("--request-fd", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--request-arena", required=True)
    parser.add_argument("--response-arena", required=True)
    # base64 of a serialized tensorflow.ConfigProto (the gateway's SessionBundleConfig)
    parser.add_argument("--session-config", type=base64.b64decode, default=b"")
    parser.add_argument("--load-threads", type=int, default=1)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s worker-{args.index} %(levelname)s %(name)s: %(message)s",
    )
    # Ctrl-C in a terminal reaches the whole process group: the gateway decides when
    # workers stop (it closes their request pipe), so a worker ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # TF logs deprecation notices and "Restoring parameters" per load at INFO/WARNING.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return loop.serve(
        loop.WorkerOptions(
            index=args.index,
            owner_pid=args.owner_pid,
            request_fd=args.request_fd,
            reply_fd=args.reply_fd,
            request_arena=args.request_arena,
            response_arena=args.response_arena,
            session_config=args.session_config,
            load_threads=args.load_threads,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
