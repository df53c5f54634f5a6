"""Server-side batching end to end (contract c.2) against a real server over REST.

Concurrent requests really share batches (tfgate_executed_batch_rows shows fewer batches
than requests) and every client still gets exactly its own rows, in order, without padding;
a full queue answers 429 at once, an expired deadline 504, one bad request fails alone, and
TF Serving's batching parameter files (global and per model) and tfgate's TOML overrides
are honoured, with TF Serving's startup errors.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import re
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest

from tests.serverproc import BIN, ServerProcess, free_port

BATCHING = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 100 }
allowed_batch_sizes: 8
allowed_batch_sizes: 16
allowed_batch_sizes: 64
"""
MODELS = ("tiny", "dnn", "half_plus_two")


def _config(tmp: pathlib.Path, zoo, names) -> pathlib.Path:  # type: ignore[no-untyped-def]
    entries = "".join(
        f'config {{ name: "{n}" base_path: "{zoo.base_path(n)}" model_platform: "tensorflow" }}\n'
        for n in names
    )
    path = tmp / "models.config"
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return path


@pytest.fixture(scope="module")
def server(model_zoo, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("batching")
    (tmp / "batching.pbtxt").write_text(BATCHING)
    proc = ServerProcess(
        [f"--model_config_file={_config(tmp, model_zoo, MODELS)}",
         "--file_system_poll_wait_seconds=0", "--enable_batching",
         f"--batching_parameters_file={tmp / 'batching.pbtxt'}"],
        tmp / "server.log",
    )
    proc.start()
    yield proc
    proc.stop()


def predict(url: str, model: str, instances: list, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model}:predict", json={"instances": instances},
                      timeout=timeout)


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of one metric's samples whose labels include `labels`."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def concurrently(fn, args_list, workers: int = 32):  # type: ignore[no-untyped-def]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda a: fn(*a), args_list))


def test_batched_rows_equal_unbatched_rows_in_order(server: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    requests = [rng.random((1 + i % 3, 256), dtype=np.float32) for i in range(48)]
    alone = [predict(server.rest_url, "dnn", r.tolist()).json()["predictions"] for r in requests]
    before_batches = metric(server.rest_url, "tfgate_executed_batch_rows_count", model_name="dnn")
    responses = concurrently(
        lambda r: predict(server.rest_url, "dnn", r.tolist()), [(r,) for r in requests]
    )
    batches = metric(server.rest_url, "tfgate_executed_batch_rows_count",
                     model_name="dnn") - before_batches
    for request, response, expected in zip(requests, responses, alone, strict=True):
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert len(got) == request.shape[0]  # own rows only: no neighbours, no padding
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert batches < len(requests)  # requests really shared batches


def test_padding_rows_never_reach_clients(server: ServerProcess) -> None:
    # allowed_batch_sizes 8/16/64: a lone 3-row request runs as a batch of 8.
    before = metric(server.rest_url, ":tensorflow:serving:batching_session:padding_size_sum",
                    model_name="tiny")
    response = predict(server.rest_url, "tiny", [[1.0], [2.0], [3.0]])
    assert response.json() == {"predictions": [[2.5], [3.0], [3.5]]}
    padding = metric(server.rest_url, ":tensorflow:serving:batching_session:padding_size_sum",
                     model_name="tiny") - before
    assert padding == 5


def test_row_order_with_many_small_requests(server: ServerProcess) -> None:
    values = [[float(i)] for i in range(64)]
    responses = concurrently(lambda v: predict(server.rest_url, "tiny", [v]),
                             [(v,) for v in values])
    assert [r.json()["predictions"][0][0] for r in responses] == [0.5 * v[0] + 2 for v in values]


def test_inner_shape_mismatch_goes_alone_and_fails_only_itself(server: ServerProcess) -> None:
    good = [[0.5] * 256]
    bad = [[0.5] * 255]
    responses = concurrently(
        lambda body: predict(server.rest_url, "dnn", body), [(good,), (bad,), (good,)] * 4
    )
    codes = [r.status_code for r in responses]
    assert codes == [200, 400, 200] * 4
    assert "Matrix size-incompatible" in responses[1].json()["error"] or "256" in responses[1].text


def test_one_bad_example_in_a_batch_fails_alone(server: ServerProcess) -> None:
    # half_plus_two's regress signature parses tf.Examples: one without feature x fails
    # parse_example for its whole batch; the batcher reruns the batch's requests one by one.
    def regress(example: dict) -> httpx.Response:
        return httpx.post(
            f"{server.rest_url}/v1/models/half_plus_two:regress",
            json={"signature_name": "regress_x_to_y", "examples": [example]}, timeout=60,
        )

    examples = [{"x": float(i)} for i in range(12)]
    examples[5] = {"other": 1.0}
    responses = concurrently(regress, [(e,) for e in examples], workers=12)
    for i, response in enumerate(responses):
        if i == 5:
            assert response.status_code == 400
            assert "x" in response.json()["error"]
        else:
            assert response.status_code == 200, response.text
            assert response.json() == {"results": [0.5 * i + 2]}


def _start(tmp: pathlib.Path, args: list[str], name: str) -> ServerProcess:
    return ServerProcess(args, tmp / f"{name}.log").start()


def test_full_queue_answers_429_and_expired_deadline_504(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # One row per batch, 300 ms per batch, two batches in flight, four queued: of 12
    # concurrent requests 6 are refused at once; with a 1 s deadline the last queued one
    # expires before a worker is free and is dropped without running.
    (tmp_path / "b.pbtxt").write_text(
        "max_batch_size { value: 1 } batch_timeout_micros { value: 0 } "
        "max_enqueued_batches { value: 4 }"
    )
    slow = model_zoo.base_path("slow")
    proc = _start(tmp_path, [
        "--model_name=slow", f"--model_base_path={slow}", "--enable_batching",
        f"--batching_parameters_file={tmp_path / 'b.pbtxt'}", "--rest_api_timeout_in_ms=1000",
    ], "queue")
    try:
        responses = concurrently(lambda: predict(proc.rest_url, "slow", [[1.0]]), [()] * 12, 12)
        codes = sorted(r.status_code for r in responses)
        full = [r for r in responses if r.status_code == 429]
        assert full and full[0].json() == {
            "error": "The batch scheduling queue to which this task was submitted is full"
        }
        assert 504 in codes and 200 in codes
        assert {r.json()["error"] for r in responses if r.status_code == 504} == {
            "Deadline Exceeded"
        }
        # This one queues behind everything still running, so the count below is final.
        assert predict(proc.rest_url, "slow", [[2.0]]).json() == {"predictions": [[3.0]]}
        accepted = len(responses) - len(full) + 1
        # worker runs (runtime_latency counts successful requests only, as TF Serving's)
        runs = metric(proc.rest_url, "tfgate_executed_batch_rows_count")
        assert runs < accepted  # at least one expired request was dropped, never run
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 6",
         "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 6; "
         "expected 8"),
        ("max_batch_size { value: oops }", "Error parsing text-format BatchingParameters"),
        ("no_such_field { value: 1 }", "Error parsing text-format BatchingParameters"),
    ],
)
def test_bad_batching_parameters_file_fails_startup(tmp_path, tfs_testdata, text, message) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "b.pbtxt"
    path.write_text(text)
    result = subprocess.run(
        [str(BIN / "tensorflow_model_server"), f"--port={free_port()}", "--rest_api_port=0",
         "--grpc_host=127.0.0.1",
         f"--model_base_path={tfs_testdata / 'saved_model_half_plus_two_cpu'}",
         "--enable_batching", f"--batching_parameters_file={path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_batching_file_without_enable_batching_fails(tmp_path, tfs_testdata) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "b.pbtxt"
    path.write_text("max_batch_size { value: 8 }")
    result = subprocess.run(
        [str(BIN / "tensorflow_model_server"), f"--port={free_port()}", "--rest_api_port=0",
         "--grpc_host=127.0.0.1",
         f"--model_base_path={tfs_testdata / 'saved_model_half_plus_two_cpu'}",
         f"--batching_parameters_file={path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "batching_parameters_file is set without setting server_options.enable_batching to true." in result.stderr


def test_per_model_batching_files_and_toml_overrides(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Model "a": its own batching_params.pbtxt (max 2); model "b": a TOML override (max 3);
    # model "c": the global file (max 64). A request larger than its limit is refused with
    # TF Serving's text, which shows which parameters applied.
    for name in ("a", "b", "c"):
        shutil.copytree(model_zoo.base_path("tiny"), tmp_path / name)
    (tmp_path / "a" / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }")
    (tmp_path / "global.pbtxt").write_text("max_batch_size { value: 64 }")
    (tmp_path / "tfgate.toml").write_text("[models.b.batching]\nmax_batch_size = 3\n")
    entries = "".join(
        f'config {{ name: "{n}" base_path: "{tmp_path / n}" model_platform: "tensorflow" }}\n'
        for n in ("a", "b", "c")
    )
    (tmp_path / "models.config").write_text(f"model_config_list {{\n{entries}}}\n")
    proc = _start(tmp_path, [
        f"--model_config_file={tmp_path / 'models.config'}", "--enable_batching",
        f"--batching_parameters_file={tmp_path / 'global.pbtxt'}",
        "--enable_per_model_batching_parameters", f"--config={tmp_path / 'tfgate.toml'}",
    ], "per_model")
    try:
        rows = [[1.0]] * 4
        assert predict(proc.rest_url, "a", rows).json() == {
            "error": "Task size 4 is larger than maximum input batch size 2"}
        assert predict(proc.rest_url, "b", rows).json() == {
            "error": "Task size 4 is larger than maximum input batch size 3"}
        assert predict(proc.rest_url, "c", rows).json() == {"predictions": [[2.5]] * 4}
    finally:
        proc.stop()


def test_batching_params_file_belongs_to_its_version(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each version's batching_params.pbtxt applies to that version only, and is read before
    the version loads: a bad file fails that version's load (with the file's error) instead
    of every request to it, and the version already serving goes on."""
    base = tmp_path / "m"
    shutil.copytree(model_zoo.base_path("tiny") / "1", base / "1")
    (base / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }")
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }\n'
    )
    proc = _start(tmp_path, [
        f"--model_config_file={tmp_path / 'models.config'}", "--enable_batching",
        "--enable_per_model_batching_parameters", "--file_system_poll_wait_seconds=1",
        "--max_num_load_retries=0",
    ], "per_version")
    try:
        # A good version 2 with a larger limit: version 1 keeps its own.
        staged = tmp_path / "staged2"
        shutil.copytree(model_zoo.base_path("tiny") / "1", staged)
        (staged / "batching_params.pbtxt").write_text("max_batch_size { value: 8 }")
        staged.rename(base / "2")
        wait_for(lambda: available(proc.rest_url, "m") == {1, 2})
        rows = [[1.0]] * 4
        by_version = httpx.post(
            f"{proc.rest_url}/v1/models/m/versions/1:predict", json={"instances": rows}, timeout=60
        )
        assert by_version.json() == {"error": "Task size 4 is larger than maximum input batch size 2"}
        assert predict(proc.rest_url, "m", rows).json() == {"predictions": [[2.5]] * 4}
        # A bad version 3: its load fails with the file's error; 1 and 2 go on serving.
        staged = tmp_path / "staged3"
        shutil.copytree(model_zoo.base_path("tiny") / "1", staged)
        (staged / "batching_params.pbtxt").write_text(
            "max_batch_size { value: 8 } allowed_batch_sizes: 3"
        )
        staged.rename(base / "3")
        wait_for(lambda: version_state(proc.rest_url, "m", 3)[0] == "END")
        assert version_state(proc.rest_url, "m", 3)[1] == (
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 3; "
            "expected 8"
        )
        assert predict(proc.rest_url, "m", rows).json() == {"predictions": [[2.5]] * 4}
    finally:
        proc.stop()


def available(url: str, model: str) -> set[int]:
    statuses = httpx.get(f"{url}/v1/models/{model}", timeout=30).json()["model_version_status"]
    return {int(s["version"]) for s in statuses if s["state"] == "AVAILABLE"}


def version_state(url: str, model: str, version: int) -> tuple[str, str]:
    response = httpx.get(f"{url}/v1/models/{model}/versions/{version}", timeout=30)
    if response.status_code != 200:
        return ("", "")
    (status,) = response.json()["model_version_status"]
    return status["state"], status["status"].get("error_message", "")


def wait_for(condition, timeout_seconds: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_ragged_inputs_padded_with_pad_variable_length_inputs(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "b.pbtxt").write_text(
        "max_batch_size { value: 16 } batch_timeout_micros { value: 200000 } "
        "pad_variable_length_inputs: true"
    )
    proc = _start(tmp_path, [
        "--model_name=tiny", f"--model_base_path={model_zoo.base_path('tiny')}",
        "--enable_batching", f"--batching_parameters_file={tmp_path / 'b.pbtxt'}",
    ], "ragged")
    try:
        before = metric(proc.rest_url, "tfgate_executed_batch_rows_count")
        bodies = [[[1.0]], [[1.0, 2.0]], [[4.0, 5.0, 6.0]]]
        responses = concurrently(lambda b: predict(proc.rest_url, "tiny", b),
                                 [(b,) for b in bodies])
        # y = 0.5x + 2 elementwise; each request's inner dims were padded to 3 with its own
        # first value, and TF Serving leaves inner padding in the outputs.
        assert [r.json()["predictions"] for r in responses] == [
            [[2.5, 2.5, 2.5]], [[2.5, 3.0, 2.5]], [[4.0, 4.5, 5.0]]]
        assert metric(proc.rest_url, "tfgate_executed_batch_rows_count") - before == 1
    finally:
        proc.stop()


def test_error_texts_are_json(server: ServerProcess) -> None:
    response = predict(server.rest_url, "tiny", [[1.0]] * 65)
    assert response.status_code == 400
    assert re.fullmatch(r"Task size 65 is larger than maximum input batch size 64",
                        json.loads(response.text)["error"])


PLATFORM_CONFIG = """
platform_configs {
  key: "tensorflow"
  value {
    source_adapter_config {
      [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {
        legacy_config {
          session_config { intra_op_parallelism_threads: 1 inter_op_parallelism_threads: 1 }
          batching_parameters {
            max_batch_size { value: 16 }
            allowed_batch_sizes: 8
            allowed_batch_sizes: 16
          }
        }
      }
    }
  }
}
"""


def test_platform_config_file_turns_batching_on(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--platform_config_file alone (no --enable_batching): its batching_parameters batch
    and pad, and its session_config reaches the worker, which loads and serves with it."""
    (tmp_path / "platform.pbtxt").write_text(PLATFORM_CONFIG)
    proc = _start(tmp_path, [
        "--model_name=tiny", f"--model_base_path={model_zoo.base_path('tiny')}",
        f"--platform_config_file={tmp_path / 'platform.pbtxt'}",
        "--tensorflow_session_parallelism=4",  # replaced by the file: logged as no effect
    ], "platform")
    try:
        response = predict(proc.rest_url, "tiny", [[1.0], [2.0], [3.0]])
        assert response.json() == {"predictions": [[2.5], [3.0], [3.5]]}
        padding = metric(proc.rest_url, ":tensorflow:serving:batching_session:padding_size_sum",
                         model_name="tiny")
        assert padding == 5  # 3 rows padded up to the allowed batch size 8
        assert "--tensorflow_session_parallelism have no effect" in proc.log()
    finally:
        proc.stop()
