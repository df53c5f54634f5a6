"""The admin API's edges against a real server: waits that outlive their caller or are
replaced, a state file that cannot be written, versions that do not exist, config reloads
that fail to read the file or add a model with no version yet."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.integration.test_lifecycle import (
    admin_headers,
    available,
    copy_version,
    versions,
    wait_for,
    write_admin_config,
)
from tests.integration.test_warmup import WRITE_WARMUP
from tests.serverproc import ServerProcess

CONFIG = 'model_config_list {{ config {{ name: "m" base_path: "{m}" model_platform: "tensorflow" }} }}\n'
CONFIG_WITH_NEW = (
    "model_config_list {{\n"
    '  config {{ name: "m" base_path: "{m}" model_platform: "tensorflow" }}\n'
    '  config {{ name: "fresh" base_path: "{fresh}" model_platform: "tensorflow" }}\n'
    "}}\n"
)


def start_admin_server(tmp_path: pathlib.Path, model_zoo, load_wait_seconds: float,  # type: ignore[no-untyped-def]
                       extra_args: tuple[str, ...] = ()):
    """Model m (half_plus_two version 1) from a model config file; admin with a token, a
    state file and the given load wait."""
    base = tmp_path / "m"
    base.mkdir()
    copy_version(model_zoo.base_path("half_plus_two") / "1", base, 1)
    config = tmp_path / "models.config"
    config.write_text(CONFIG.format(m=base))
    toml, state = write_admin_config(tmp_path, f"load_wait_seconds = {load_wait_seconds}\n")
    server = ServerProcess(
        [f"--model_config_file={config}", f"--config={toml}",
         "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0", *extra_args],
        tmp_path / "server.log",
    ).start()
    server.base = base  # type: ignore[attr-defined]
    server.config = config  # type: ignore[attr-defined]
    server.state = state  # type: ignore[attr-defined]
    return server


@pytest.fixture
def admin_server(tmp_path: pathlib.Path, model_zoo):  # type: ignore[no-untyped-def]
    server = start_admin_server(tmp_path, model_zoo, load_wait_seconds=3)
    yield server
    server.stop()


@pytest.fixture
def patient_admin_server(tmp_path: pathlib.Path, model_zoo):  # type: ignore[no-untyped-def]
    server = start_admin_server(tmp_path, model_zoo, load_wait_seconds=60)
    yield server
    server.stop()


def _publish_slow_version(model_zoo, base: pathlib.Path, version: int, tmp: pathlib.Path,  # type: ignore[no-untyped-def]
                          records: int = 12) -> None:
    """A version whose load replays `records` warmup records through a 300 ms model
    (12: >= 3.6 s)."""
    staging = tmp / f"slow-staging-{version}"
    shutil.copytree(model_zoo.base_path("slow") / "1", staging)
    (staging / "assets.extra").mkdir()
    subprocess.run(
        [sys.executable, "-c", WRITE_WARMUP,
         str(staging / "assets.extra" / "tf_serving_warmup_requests"), str(records)],
        check=True,
    )
    staging.rename(base / str(version))


def _describe(http: httpx.Client) -> dict:
    return http.get("/v1/admin/models/m", headers=admin_headers()).json()


def test_versions_that_do_not_exist_and_malformed_versions(admin_server) -> None:  # type: ignore[no-untyped-def]
    with admin_server.client() as http:
        unload = http.post("/v1/admin/models/m/versions/7/unload", headers=admin_headers())
        assert unload.status_code == 404
        assert unload.json() == {
            "error": f"Version 7 of model m is neither loaded nor on disk under "
                     f"{admin_server.base}"
        }
        assert _describe(http)["excluded_versions"] == []  # nothing hidden for later
        for path in ("versions/abc/load", "versions/1.5/unload", "versions/-1/load"):
            bad = http.post(f"/v1/admin/models/m/{path}", headers=admin_headers())
            assert bad.status_code == 400, path
            assert bad.json()["error"].startswith("Version must be a non-negative integer")


def test_pin_refused_when_the_state_file_cannot_be_written(admin_server) -> None:  # type: ignore[no-untyped-def]
    admin_server.state.parent.write_text("a file where the state directory should be")
    with admin_server.client() as http:
        pinned = http.post("/v1/admin/models/m/pin", json={"version": 1}, headers=admin_headers())
        assert pinned.status_code == 503
        assert "Cannot write the admin state file" in pinned.json()["error"]
        assert pinned.json()["error"].endswith("nothing was changed")
        assert _describe(http)["pinned_version"] is None


def test_a_pin_outlives_its_caller_and_a_later_unpin_replaces_a_waiting_one(
    patient_admin_server, model_zoo, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    server = patient_admin_server
    _publish_slow_version(model_zoo, server.base, 0, tmp_path)  # below 1: policy skips it
    with server.client() as http:
        # The caller gives up long before the version has loaded; the pin still completes
        # and is persisted.
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/admin/models/m/pin", json={"version": 0}, headers=admin_headers(),
                      timeout=0.5)
        wait_for(lambda: available(http, "m") == {0, 1}, timeout=60)  # the policy keeps 1
        wait_for(lambda: server.state.exists()
                 and json.loads(server.state.read_text()) == {"pins": {"m": 0}})
        described = _describe(http)
        assert (described["pinned_version"], described["serving_version"]) == (0, 0)

        assert http.delete("/v1/admin/models/m/pin", headers=admin_headers()).status_code == 200
        wait_for(lambda: available(http, "m") == {1}, timeout=60)
        # A pin still waiting for its version is replaced by an unpin, which does not wait
        # for the pin's lock: the pin answers ABORTED and nothing stays pinned.
        answer: dict[str, httpx.Response] = {}
        waiting = threading.Thread(target=lambda: answer.update(pin=http.post(
            "/v1/admin/models/m/pin", json={"version": 0}, headers=admin_headers(), timeout=60
        )))
        waiting.start()
        wait_for(lambda: versions(http, "m").get("0") == "LOADING", interval=0.05)
        started = time.monotonic()
        unpinned = http.delete("/v1/admin/models/m/pin", headers=admin_headers(), timeout=10)
        assert unpinned.status_code == 200
        assert time.monotonic() - started < 2.0
        waiting.join(60)
        assert answer["pin"].status_code == 409
        assert "replaced this request before it loaded" in answer["pin"].json()["error"]
        assert _describe(http)["pinned_version"] is None
        assert json.loads(server.state.read_text()) == {"pins": {}}


def test_a_pin_not_loaded_within_the_wait_is_undone(
    admin_server, model_zoo, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    _publish_slow_version(model_zoo, admin_server.base, 0, tmp_path)  # >= 3.6 s; wait is 3 s
    with admin_server.client() as http:
        pinned = http.post("/v1/admin/models/m/pin", json={"version": 0},
                           headers=admin_headers(), timeout=60)
        assert pinned.status_code == 504
        assert pinned.json()["error"] == (
            "Cannot pin model m to version 0: it was not available after 3 s; the request "
            "was undone"
        )
        assert _describe(http)["pinned_version"] is None
        wait_for(lambda: "0" not in versions(http, "m") or versions(http, "m")["0"] == "END")
        assert available(http, "m") == {1}
        assert not admin_server.state.exists() or json.loads(
            admin_server.state.read_text()) == {"pins": {}}


def test_reload_config_errors_and_a_new_model_without_versions(
    admin_server, model_zoo, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    config: pathlib.Path = admin_server.config
    with admin_server.client() as http:
        config.write_text("this is not a config")
        bad = http.post("/v1/admin/reload-config", headers=admin_headers())
        assert bad.status_code == 400
        assert "ModelServerConfig" in bad.json()["error"]
        config.unlink()
        missing = http.post("/v1/admin/reload-config", headers=admin_headers())
        assert missing.status_code == 400
        assert missing.json()["error"].startswith(f"Unable to read config file {config}")

        fresh = tmp_path / "fresh"
        fresh.mkdir()
        config.write_text(CONFIG_WITH_NEW.format(m=admin_server.base, fresh=fresh))
        answer: dict[str, httpx.Response] = {}
        reload = threading.Thread(target=lambda: answer.update(reload=http.post(
            "/v1/admin/reload-config", headers=admin_headers(), timeout=30
        )))
        reload.start()
        time.sleep(0.5)
        # While the reload waits for "fresh", admin changes to other models go through.
        pinned = http.post("/v1/admin/models/m/pin", json={"version": 1},
                           headers=admin_headers(), timeout=5)
        assert pinned.status_code == 200
        reload.join(30)
        assert answer["reload"].status_code == 504
        assert "model(s) fresh have no available version after 3 s" in (
            answer["reload"].json()["error"]
        )
        # The config is in force: the version appears and loads.
        copy_version(model_zoo.base_path("half_plus_two") / "1", fresh, 1)
        wait_for(lambda: available(http, "fresh") == {1}, timeout=60)


def _in_thread(http: httpx.Client, answer: dict[str, httpx.Response], key: str, method: str,
               path: str, **kwargs: object) -> threading.Thread:
    thread = threading.Thread(target=lambda: answer.update({key: http.request(
        method, path, headers=admin_headers(), timeout=90, **kwargs  # type: ignore[arg-type]
    )}))
    thread.start()
    return thread


def test_an_undone_pin_or_load_puts_back_what_was_there(
    admin_server, model_zoo, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    """While a pin waits, the saved pin's version cannot be unloaded (the pin falls back to
    it); an undone load leaves an unloaded version unloaded again."""
    _publish_slow_version(model_zoo, admin_server.base, 0, tmp_path)  # >= 3.6 s; wait is 3 s
    with admin_server.client() as http:
        assert http.post("/v1/admin/models/m/pin", json={"version": 1},
                         headers=admin_headers()).status_code == 200
        answer: dict[str, httpx.Response] = {}
        pin = _in_thread(http, answer, "pin", "POST", "/v1/admin/models/m/pin",
                         json={"version": 0})
        wait_for(lambda: versions(http, "m").get("0") == "LOADING", interval=0.05)
        unload = http.post("/v1/admin/models/m/versions/1/unload", headers=admin_headers())
        assert unload.status_code == 400
        assert unload.json()["error"] == "Version 1 of model m is pinned; unpin it first"
        pin.join(60)
        assert answer["pin"].status_code == 504
        described = _describe(http)
        assert (described["pinned_version"], described["serving_version"]) == (1, 1)
        assert described["excluded_versions"] == []
        assert json.loads(admin_server.state.read_text()) == {"pins": {"m": 1}}

        wait_for(lambda: versions(http, "m").get("0") in (None, "END"), timeout=30)
        assert http.post("/v1/admin/models/m/versions/0/unload",
                         headers=admin_headers()).status_code == 200
        assert _describe(http)["excluded_versions"] == [0]
        load = http.post("/v1/admin/models/m/versions/0/load", headers=admin_headers(),
                         timeout=60)
        assert load.status_code == 504
        assert "the request was undone" in load.json()["error"]
        assert _describe(http)["excluded_versions"] == [0]


def test_a_reload_removing_the_model_ends_a_waiting_pin(
    admin_server, model_zoo, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    _publish_slow_version(model_zoo, admin_server.base, 0, tmp_path, records=40)  # >= 12 s
    other = tmp_path / "other"
    other.mkdir()
    copy_version(model_zoo.base_path("half_plus_two") / "1", other, 1)
    with admin_server.client() as http:
        answer: dict[str, httpx.Response] = {}
        started = time.monotonic()
        pin = _in_thread(http, answer, "pin", "POST", "/v1/admin/models/m/pin",
                         json={"version": 0})
        wait_for(lambda: versions(http, "m").get("0") == "LOADING", interval=0.05)
        admin_server.config.write_text(CONFIG.format(m=other).replace('"m"', '"other"'))
        # "other" loads after the slow version (one load at a time per worker), so the
        # reload may answer 504 after its 3 s; its config is in force either way.
        reload = http.post("/v1/admin/reload-config", headers=admin_headers(), timeout=60)
        assert reload.status_code in (200, 504), reload.text
        pin.join(60)
        assert answer["pin"].status_code == 409
        assert "config reload replaced this request" in answer["pin"].json()["error"]
        assert time.monotonic() - started < 10  # not the 12 s load, not a 500 after it
        wait_for(lambda: available(http, "other") == {1}, timeout=60)
    assert "Traceback" not in admin_server.log()


def test_shutdown_answers_a_waiting_pin_at_once(
    patient_admin_server, model_zoo, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    server = patient_admin_server
    _publish_slow_version(model_zoo, server.base, 0, tmp_path, records=100)  # >= 30 s
    with server.client() as http:
        answer: dict[str, httpx.Response] = {}
        pin = _in_thread(http, answer, "pin", "POST", "/v1/admin/models/m/pin",
                         json={"version": 0})
        wait_for(lambda: versions(http, "m").get("0") == "LOADING", interval=0.05)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 20
        pin.join(30)
    assert answer["pin"].status_code == 503
    assert answer["pin"].json() == {"error": "The server is shutting down"}
    assert not server.state.exists() or json.loads(server.state.read_text()) == {"pins": {}}


def test_the_config_poll_retries_a_refused_label_until_its_version_loads(
    model_zoo, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    """As TF Serving's poller: a label on a version still loading is refused, and the same
    file applies at a later poll once the version is AVAILABLE."""
    server = start_admin_server(tmp_path, model_zoo, load_wait_seconds=3,
                                extra_args=("--model_config_file_poll_wait_seconds=1",))
    try:
        _publish_slow_version(model_zoo, server.base, 2, tmp_path)  # >= 3.6 s of load
        server.config.write_text(
            f'model_config_list {{ config {{ name: "m" base_path: "{server.base}" '
            'model_platform: "tensorflow" version_labels { key: "stable" value: 2 } } }\n'
        )
        with server.client() as http:
            wait_for(lambda: "Request to assign label to version 2 of model m" in server.log(),
                     timeout=30)
            # Until the label applies, predicting by it is refused (unknown label).
            labelled = wait_for(lambda: (r := http.post(
                "/v1/models/m/labels/stable:predict", json={"instances": [[2.0]]}
            )).status_code == 200 and r.json(), timeout=60)
            assert labelled == {"predictions": [[3.0]]}
            assert available(http, "m") == {1, 2} or available(http, "m") == {2}
    finally:
        server.stop()
