"""Start, probe and stop the servers a benchmark compares, all bound to 127.0.0.1.

Data path position: process management around the load. Each server is a child process
started here, known by its PID, waited for until a real predict answers 200, and stopped
by SIGTERM to that PID (SIGKILL after a grace period) together with the children it spawned
(tfgate's workers, BentoML's service process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from app.settings.flags import FLAGS
from bench.probes import children

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENTOML_VENV = ROOT / "bench" / ".venv-bentoml"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class ServerSpec:
    """How to start one server and where its predict routes are."""

    name: str
    argv: list[str]
    rest_port: int
    path_template: str  # e.g. "/v1/models/{model}:predict"
    grpc_port: int | None = None
    metrics: bool = False  # tfgate's /metrics on the REST port
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: pathlib.Path = ROOT

    def path(self, model: str) -> str:
        return self.path_template.format(model=model)


class RunningServer:
    def __init__(self, spec: ServerSpec, log_dir: pathlib.Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **spec.env)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            spec.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, model: str, body: bytes, timeout_seconds: float = 240.0) -> None:
        url = f"http://{HOST}:{self.spec.rest_port}{self.spec.path(model)}"
        deadline = time.monotonic() + timeout_seconds
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                request = urllib.request.Request(
                    url, data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last_error = str(exc)
            time.sleep(0.5)
        raise TimeoutError(f"{self.spec.name} not ready after {timeout_seconds}s: {last_error}")

    def stop(self, timeout_seconds: float = 30.0) -> None:
        if self.process.poll() is None:
            spawned = children(self.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for pid in spawned:  # normally gone with their parent already
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()


def tfgate_spec(
    model_root: pathlib.Path, work_dir: pathlib.Path, batching_file: pathlib.Path,
    extra_args: list[str], name: str = "tfgate",
) -> ServerSpec:
    config = work_dir / "models.config"
    entries = "".join(
        f'  config {{ name: "{m}" base_path: "{model_root / m}" model_platform: "tensorflow" }}\n'
        for m in sorted(os.listdir(model_root))
        if (model_root / m / "1").is_dir()
    )
    config.write_text("model_config_list {\n" + entries + "}\n")
    rest, grpc_port = free_port(), free_port()
    argv = [
        str(pathlib.Path(sys.executable).parent / "tensorflow_model_server"),
        f"--port={grpc_port}", f"--rest_api_port={rest}",
        "--rest_api_host=127.0.0.1", "--grpc_host=127.0.0.1",
        f"--model_config_file={config}", "--file_system_poll_wait_seconds=0",
        "--enable_batching", f"--batching_parameters_file={batching_file}",
        "--tensorflow_model_server_log_level=warning",
        *extra_args,
    ]
    return ServerSpec(name, argv, rest, "/v1/models/{model}:predict", grpc_port, True)


GRPC_TRANSPORTS = ("h2", "grpcio")  # --grpc_implementation's values
# The suite's second tuned tfgate, on the gRPC transport the main one does not run, and the
# (server, protocol) key its gRPC levels are reported under.
ALT_NAME = "alt"
ALT = (ALT_NAME, "grpc")
DEFAULT_TRANSPORT = next(f.default for f in FLAGS if f.name == "grpc_implementation")


def grpc_transports(tfgate_args: Sequence[str]) -> tuple[str, str]:
    """(the gRPC transport tfgate runs with, the other one): the last
    --grpc_implementation in `tfgate_args`, else the flag's default."""
    chosen = [a.split("=", 1)[1] for a in tfgate_args if a.startswith("--grpc_implementation=")]
    main = chosen[-1] if chosen else DEFAULT_TRANSPORT
    other = next(t for t in GRPC_TRANSPORTS if t != main)
    return main, other


def fastapi_spec(mode: str, model_root: pathlib.Path) -> ServerSpec:
    """The naive server, or the constant-reply server with its gRPC ceiling beside it."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.baselines.fastapi_servers", mode, f"--port={port}",
            f"--model_root={model_root}"]
    grpc_port = free_port() if mode == "constant" else None
    if grpc_port is not None:
        argv.append(f"--grpc_port={grpc_port}")
    return ServerSpec(mode, argv, port, "/v1/models/{model}:predict", grpc_port)


def bentoml_available() -> str | None:
    """None when BentoML can run here, else why not (reported in docs/benchmarks.md)."""
    binary = BENTOML_VENV / "bin" / "bentoml"
    if not binary.exists():
        return f"{binary} is missing: run bench/setup_bentoml.sh"
    return None


def bentoml_spec(
    model_root: pathlib.Path, work_dir: pathlib.Path, max_batch_size: int
) -> ServerSpec:
    port = free_port()
    argv = [str(BENTOML_VENV / "bin" / "bentoml"), "serve", "bentoml_service:TfModels",
            "--host", HOST, "--port", str(port)]
    env = {
        "BENCH_MODEL_ROOT": str(model_root),
        "BENTOML_HOME": str(work_dir / "bentoml-home"),
        "BENCH_BENTOML_MAX_BATCH_SIZE": str(max_batch_size),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    return ServerSpec("bentoml", argv, port, "/{model}", env=env,
                      cwd=ROOT / "bench" / "baselines")


def bentoml_version() -> str:
    try:
        out = subprocess.run(
            [str(BENTOML_VENV / "bin" / "python"), "-c",
             "import json, bentoml, tensorflow as tf; "
             "print(json.dumps([bentoml.__version__, tf.__version__]))"],
            capture_output=True, text=True, timeout=120, check=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        ).stdout.strip().splitlines()[-1]
        bento, tf = json.loads(out)
        return f"bentoml {bento}, tensorflow-cpu {tf}"
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return "unknown"
