"""Model lifecycle against a real server: policies, labels, discovery (add / remove /
replace versions), failed loads, config polling, warmup, and the admin API with pins."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time

import grpc
import httpx
import pytest

from proto import admin_pb2, admin_pb2_grpc
from tests.integration.test_warmup import WRITE_WARMUP
from tests.serverproc import ServerProcess

TOKEN = "s3cret-admin-token"


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")


def versions(http: httpx.Client, name: str) -> dict[str, str]:
    response = http.get(f"/v1/models/{name}")
    if response.status_code != 200:
        return {}
    return {v["version"]: v["state"] for v in response.json()["model_version_status"]}


def available(http: httpx.Client, name: str) -> set[int]:
    return {int(v) for v, s in versions(http, name).items() if s == "AVAILABLE"}


def copy_version(source: pathlib.Path, base: pathlib.Path, version: int) -> None:
    """Publish a version the way a careful pipeline does: copy aside, rename into place."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    staging.rename(base / str(version))


@pytest.fixture(scope="module")
def hp2(model_zoo) -> pathlib.Path:  # type: ignore[no-untyped-def]
    return model_zoo.base_path("half_plus_two") / "1"


def admin_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_admin_config(tmp_path: pathlib.Path, extra: str = "") -> tuple[pathlib.Path, pathlib.Path]:
    """A tfgate TOML with the admin token file and a state file (not created yet) under
    tmp_path, plus `extra` [admin] lines; returns (toml, state file)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    state = tmp_path / "state" / "pins.json"
    config = tmp_path / "tfgate.toml"
    config.write_text(f'[admin]\ntokens_file = "{tokens}"\nstate_file = "{state}"\n{extra}')
    return config, state


@pytest.fixture
def lifecycle_server(tmp_path: pathlib.Path, hp2: pathlib.Path):  # type: ignore[no-untyped-def]
    base = tmp_path / "m"
    base.mkdir()
    copy_version(hp2, base, 1)
    config, state = write_admin_config(tmp_path)
    args = [
        "--model_name=m", f"--model_base_path={base}", f"--config={config}",
        "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0",
    ]
    server = ServerProcess(args, tmp_path / "server.log").start()
    server.base = base  # type: ignore[attr-defined]
    server.state = state  # type: ignore[attr-defined]
    server.extra_args = args  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_new_version_loads_then_old_unloads_and_rollback(lifecycle_server, hp2) -> None:  # type: ignore[no-untyped-def]
    base = lifecycle_server.base
    with lifecycle_server.client() as http:
        assert available(http, "m") == {1}
        copy_version(hp2, base, 2)
        wait_for(lambda: available(http, "m") == {2})
        wait_for(lambda: versions(http, "m")["1"] == "END")
        # rollback: delete the newest; the previous one comes back
        shutil.rmtree(base / "2")
        wait_for(lambda: available(http, "m") == {1})
        predict = http.post("/v1/models/m:predict", json={"instances": [2.0]})
        assert predict.json() == {"predictions": [3.0]}


def test_bad_new_version_never_takes_down_the_serving_one(lifecycle_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = lifecycle_server.base
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    copy_version(broken, base, 5)
    with lifecycle_server.client() as http:
        def failed() -> bool:
            status = http.get("/v1/models/m/versions/5")
            if status.status_code != 200:
                return False
            entry = status.json()["model_version_status"][0]
            return entry["state"] == "END" and entry["status"]["error_code"] != "OK"

        wait_for(failed)
        assert available(http, "m") == {1}
        assert http.post("/v1/models/m:predict", json={"instances": [2.0]}).status_code == 200


def test_admin_requires_token(lifecycle_server) -> None:  # type: ignore[no-untyped-def]
    with lifecycle_server.client() as http:
        assert http.get("/v1/admin/models").status_code == 401
        wrong = http.get("/v1/admin/models", headers=admin_headers("nope"))
        assert wrong.status_code == 403
        assert wrong.json() == {"error": "Invalid admin token"}
        ok = http.get("/v1/admin/models", headers=admin_headers())
        assert ok.status_code == 200
        (model,) = ok.json()["models"]
        assert model["name"] == "m"
        assert model["policy"] == {"latest": {"num_versions": 1}}
        assert model["pinned_version"] is None
        assert model["versions"][0]["state"] == "AVAILABLE"
    assert TOKEN not in lifecycle_server.log()


def test_pin_unpin_and_persistence_across_restart(lifecycle_server, hp2, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = lifecycle_server.base
    with lifecycle_server.client() as http:
        copy_version(hp2, base, 2)
        wait_for(lambda: available(http, "m") == {2})
        missing = http.post("/v1/admin/models/m/pin", json={"version": 9}, headers=admin_headers())
        assert missing.status_code == 404
        assert "Version 9 of model m is not on disk" in missing.json()["error"]
        pinned = http.post("/v1/admin/models/m/pin", json={"version": 1}, headers=admin_headers())
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["pinned_version"] == 1
        assert pinned.json()["serving_version"] == 1
        assert available(http, "m") == {1, 2}  # pinned stays loaded whatever the policy
        status = http.post("/v1/models/m:predict", json={"instances": [2.0]})
        assert status.status_code == 200
        assert json.loads(lifecycle_server.state.read_text()) == {"pins": {"m": 1}}
    # restart: the pin survives
    lifecycle_server.stop()
    again = ServerProcess(lifecycle_server.extra_args, tmp_path / "again.log").start()
    try:
        with again.client() as http:
            listing = http.get("/v1/admin/models/m", headers=admin_headers()).json()
            assert listing["pinned_version"] == 1
            assert listing["serving_version"] == 1
            unpinned = http.delete("/v1/admin/models/m/pin", headers=admin_headers())
            assert unpinned.json()["pinned_version"] is None
            wait_for(lambda: available(http, "m") == {2})
            assert json.loads(lifecycle_server.state.read_text()) == {"pins": {}}
    finally:
        again.stop()


def test_pin_refused_when_version_fails_to_load(lifecycle_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"garbage")
    copy_version(broken, lifecycle_server.base, 0)  # lower than 1: not aspired by the policy
    with lifecycle_server.client() as http:
        response = http.post(
            "/v1/admin/models/m/pin", json={"version": 0}, headers=admin_headers(), timeout=600
        )
        assert response.status_code == 400
        assert "Cannot pin model m to version 0: it failed to load" in response.json()["error"]
        listing = http.get("/v1/admin/models/m", headers=admin_headers()).json()
        assert listing["pinned_version"] is None
        assert listing["serving_version"] == 1


def test_explicit_load_and_unload(lifecycle_server, hp2) -> None:  # type: ignore[no-untyped-def]
    copy_version(hp2, lifecycle_server.base, 0)
    with lifecycle_server.client() as http:
        loaded = http.post("/v1/admin/models/m/versions/0/load", headers=admin_headers())
        assert loaded.status_code == 200, loaded.text
        assert available(http, "m") == {0, 1}
        assert http.post("/v1/models/m/versions/0:predict", json={"instances": [2.0]}).json() == {
            "predictions": [3.0]
        }
        unloaded = http.post("/v1/admin/models/m/versions/0/unload", headers=admin_headers())
        assert unloaded.status_code == 200
        wait_for(lambda: available(http, "m") == {1})


def test_admin_over_grpc(lifecycle_server) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(f"127.0.0.1:{lifecycle_server.grpc_port}") as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(admin_pb2.ListModelsRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.ListModels(
            admin_pb2.ListModelsRequest(), metadata=[("authorization", f"Bearer {TOKEN}")]
        )
        assert json.loads(reply.json)["models"][0]["name"] == "m"


CONFIG_ONE = 'model_config_list {{ config {{ name: "a" base_path: "{a}" model_platform: "tensorflow" }} }}'
CONFIG_TWO = (
    'model_config_list {{ config {{ name: "b" base_path: "{b}" model_platform: "tensorflow" '
    'model_version_policy {{ all {{}} }} version_labels {{ key: "stable" value: 1 }} }} }}'
)


def test_config_file_polling_replaces_models(tmp_path: pathlib.Path, hp2: pathlib.Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    copy_version(hp2, a, 1)
    copy_version(hp2, b, 1)
    copy_version(hp2, b, 2)
    config = tmp_path / "models.config"
    config.write_text(CONFIG_ONE.format(a=a))
    # CONFIG_TWO adds b and labels its version 1 in one change: TF Serving (and tfgate)
    # only accept a label on a version that is not AVAILABLE yet with this flag.
    server = ServerProcess(
        [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
         "--allow_version_labels_for_unavailable_models"],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            assert available(http, "a") == {1}
            config.write_text(CONFIG_TWO.format(b=b))
            wait_for(lambda: available(http, "b") == {1, 2})
            wait_for(lambda: available(http, "a") == set())
            labelled = http.post("/v1/models/b/labels/stable:predict", json={"instances": [2.0]})
            assert labelled.json() == {"predictions": [3.0]}
            # a broken file is reported and ignored: b keeps serving
            config.write_text("this is not a config")
            time.sleep(2.5)
            assert available(http, "b") == {1, 2}
            assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in server.log()
    finally:
        server.stop()


def test_replaced_version_directory_is_reloaded(lifecycle_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A version dir swapped in place (same number, new content) is loaded again."""
    base = lifecycle_server.base
    with lifecycle_server.client() as http:
        before = lifecycle_server.log().count("Successfully loaded servable version")
        replacement = tmp_path / "replacement"
        shutil.copytree(base / "1", replacement)
        shutil.rmtree(base / "1")
        replacement.rename(base / "1")
        wait_for(
            lambda: lifecycle_server.log().count("Successfully loaded servable version") > before,
            timeout=30,
        )
        assert http.post("/v1/models/m:predict", json={"instances": [2.0]}).status_code == 200


def test_failed_reload_of_a_replaced_directory_keeps_serving(lifecycle_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A version dir swapped in place for a broken one: the reload fails, and the copy that
    was loaded keeps answering (it is not unloaded from the workers)."""
    base = lifecycle_server.base
    with lifecycle_server.client() as http:
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a protobuf")
        shutil.rmtree(base / "1")
        broken.rename(base / "1")
        wait_for(lambda: "the loaded copy keeps serving" in lifecycle_server.log(), timeout=30)
        assert available(http, "m") == {1}
        response = http.post("/v1/models/m:predict", json={"instances": [2.0]})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": [3.0]}


def test_a_slow_load_does_not_stall_serving(model_zoo, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    """A version whose load takes seconds loads on the worker's loader thread: while it is
    LOADING, the other model in the same worker and the old version keep answering."""
    slow = model_zoo.base_path("slow") / "1"  # 300 ms of spinning per call
    base = tmp_path / "slowload"
    base.mkdir()
    copy_version(slow, base, 1)
    (tmp_path / "models.config").write_text(
        "model_config_list {\n"
        f'config {{ name: "slowload" base_path: "{base}" model_platform: "tensorflow" }}\n'
        f'config {{ name: "tiny" base_path: "{model_zoo.base_path("tiny")}" '
        'model_platform: "tensorflow" }\n}\n'
    )
    server = ServerProcess(
        [f"--model_config_file={tmp_path / 'models.config'}",
         "--file_system_poll_wait_seconds=1"],
        tmp_path / "server.log",
    ).start()
    try:
        with server.client() as http:
            # Version 2 replays 12 warmup records through the 300 ms model: >= 3.6 s of load.
            staging = tmp_path / "staging-2"
            shutil.copytree(slow, staging)
            (staging / "assets.extra").mkdir()
            subprocess.run(
                [sys.executable, "-c", WRITE_WARMUP,
                 str(staging / "assets.extra" / "tf_serving_warmup_requests"), "12"],
                check=True,
            )
            staging.rename(base / "2")
            wait_for(lambda: versions(http, "slowload").get("2") == "LOADING", timeout=30,
                     interval=0.05)
            time.sleep(0.5)  # the load request has reached the worker
            tiny = http.post("/v1/models/tiny:predict", json={"instances": [[2.0]]})
            old = http.post("/v1/models/slowload/versions/1:predict",
                            json={"instances": [[2.0]]})
            # Both answered while version 2 was still loading in the same worker.
            assert versions(http, "slowload").get("2") == "LOADING"
            assert tiny.json() == {"predictions": [[3.0]]}
            assert old.json() == {"predictions": [[3.0]]}
            wait_for(lambda: available(http, "slowload") == {2}, timeout=60)
            assert http.post("/v1/models/slowload:predict",
                             json={"instances": [[4.0]]}).json() == {"predictions": [[4.0]]}
    finally:
        server.stop()
    assert "Number of warmup records read: 12." in server.log()
