"""The Redis result cache end to end: a real tfgate server, a real redis-server, REST and gRPC.

One server (half_plus_two cached, tiny not) for the whole module; the tests run in file order
and the last ones change the world (a new version, Redis killed). Hits and misses are read
from the server's /metrics, hit ratio from the admin listing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from app.core.protos import (
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tests.redisproc import RedisProcess, running_redis
from tests.serverproc import ServerProcess

MODEL = "half_plus_two"
TOKEN = "cache-test-token"
CONFIG = """
model_config_list {{
  config {{ name: "half_plus_two" base_path: "{base}" model_platform: "tensorflow" }}
  config {{ name: "tiny" base_path: "{tiny}" model_platform: "tensorflow" }}
  config {{ name: "slow" base_path: "{slow}" model_platform: "tensorflow" }}
}}
"""
TOML = """
[cache]
url = "{url}"
timeout_ms = 50
breaker_failure_threshold = 3
breaker_reset_seconds = 0.5

[models.half_plus_two.cache]
enabled = true
deterministic = true
ttl_seconds = 600

[models.slow.cache]
enabled = true
deterministic = true

[admin]
"""


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with running_redis(tmp_path_factory.mktemp("redis")) as process:
        yield process


@pytest.fixture(scope="module")
def server(model_zoo, redis: RedisProcess, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("cache")
    base = tmp / "half_plus_two"
    shutil.copytree(model_zoo.base_path("half_plus_two") / "1", base / "1")
    (tmp / "models.config").write_text(CONFIG.format(
        base=base, tiny=model_zoo.base_path("tiny"), slow=model_zoo.base_path("slow")))
    (tmp / "tfgate.toml").write_text(TOML.format(url=redis.url))
    proc = ServerProcess(
        [f"--model_config_file={tmp / 'models.config'}", f"--config={tmp / 'tfgate.toml'}",
         "--file_system_poll_wait_seconds=1"],
        tmp / "server.log",
    )
    os.environ["TFGATE_ADMIN_TOKENS"] = TOKEN
    try:
        proc.start()
    finally:
        del os.environ["TFGATE_ADMIN_TOKENS"]
    proc.base = base  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def metric(client: httpx.Client, name: str, labels: str = f'model_name="{MODEL}"') -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def breaker_state(client: httpx.Client) -> float:
    match = re.search(r"^tfgate_cache_breaker_state (\S+)$", client.get("/metrics").text, re.M)
    assert match
    return float(match.group(1))


def predict(client: httpx.Client, xs: list[float], model: str = MODEL,
            headers: dict[str, str] | None = None) -> list[float]:
    response = client.post(f"/v1/models/{model}:predict",
                           json={"instances": [[x] for x in xs]}, headers=headers)
    assert response.status_code == 200, response.text
    return [p[0] for p in response.json()["predictions"]]


def counts(client: httpx.Client) -> tuple[float, float]:
    return metric(client, "tfgate_cache_hits"), metric(client, "tfgate_cache_misses")


def wait_for(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_miss_then_hit_then_partial(client: httpx.Client, redis: RedisProcess) -> None:
    hits, misses = counts(client)
    assert predict(client, [1.0, 2.0, 3.0]) == [2.5, 3.0, 3.5]
    assert counts(client) == (hits, misses + 3)
    wait_for(lambda: redis.dbsize() >= 3)  # stores are written in the background
    assert predict(client, [1.0, 2.0, 3.0]) == [2.5, 3.0, 3.5]
    assert counts(client) == (hits + 3, misses + 3)
    # 2 of 4 rows cached: only 2 run on the model, the answer keeps the request's row order
    assert predict(client, [3.0, 10.0, 1.0, 20.0]) == [3.5, 7.0, 2.5, 12.0]
    assert counts(client) == (hits + 5, misses + 5)


def test_cache_control_headers(client: httpx.Client, redis: RedisProcess) -> None:
    predict(client, [40.0])
    wait_for(lambda: metric(client, "tfgate_cache_misses") > 0 and redis.dbsize() >= 1)
    size = redis.dbsize()
    hits, misses = counts(client)
    assert predict(client, [40.0], headers={"Cache-Control": "no-cache"}) == [22.0]
    assert counts(client) == (hits, misses + 1)  # not read
    assert predict(client, [41.0], headers={"Cache-Control": "no-store"}) == [22.5]
    time.sleep(0.2)
    assert redis.dbsize() == size  # not written
    assert predict(client, [42.0], headers={"cache-control": "no-cache"}) == [23.0]
    wait_for(lambda: redis.dbsize() == size + 1)  # no-cache still writes
    assert metric(client, "tfgate_cache_bypasses",
                  f'model_name="{MODEL}",reason="no_store"') == 1


def test_uncached_model_is_not_cached(client: httpx.Client, redis: RedisProcess) -> None:
    size = redis.dbsize()
    predict(client, [5.0], model="tiny")
    predict(client, [5.0], model="tiny")
    time.sleep(0.2)
    assert redis.dbsize() == size
    assert metric(client, "tfgate_cache_misses", 'model_name="tiny"') == 0


def test_classify_and_regress_are_cached(client: httpx.Client) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}, {"x": 81.0}]}
    first = client.post(f"/v1/models/{MODEL}:regress", json=body)
    assert first.status_code == 200, first.text
    hits, _ = counts(client)
    wait_for(lambda: client.post(f"/v1/models/{MODEL}:regress", json=body).json() == first.json()
             and counts(client)[0] >= hits + 2)
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 80.0}]}
    first = client.post(f"/v1/models/{MODEL}:classify", json=body)
    assert first.status_code == 200, first.text
    hits, _ = counts(client)
    wait_for(lambda: client.post(f"/v1/models/{MODEL}:classify", json=body).json()
             == first.json() and counts(client)[0] >= hits + 1)


def test_single_flight_runs_concurrent_identical_misses_once(server: ServerProcess) -> None:
    """8 identical requests for a row nobody asked before, while the slow model (300 ms per
    run) computes it: one model run, the other 7 wait for its row."""
    def one(_: int) -> list[float]:
        with server.client() as http:
            return predict(http, [123.0], model="slow")

    with server.client() as http:
        runs = metric(http, ":tensorflow:serving:runtime_latency_count",
                      'model_name="slow",API="Predict",runtime="TF1"')
        misses = metric(http, "tfgate_cache_misses", 'model_name="slow"')
        coalesced = metric(http, "tfgate_cache_coalesced", 'model_name="slow"')
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(8)))
        assert answers == [[63.5]] * 8
        assert metric(http, "tfgate_cache_misses", 'model_name="slow"') == misses + 1
        assert metric(http, "tfgate_cache_coalesced", 'model_name="slow"') == coalesced + 7
        assert metric(http, ":tensorflow:serving:runtime_latency_count",
                      'model_name="slow",API="Predict",runtime="TF1"') == runs + 1


def _grpc_predict(server: ServerProcess, x: float, metadata: tuple = ()) -> float:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[x],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1),
                 tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30, metadata=metadata)
    return response.outputs["y"].float_val[0]


def test_grpc_shares_the_cache_and_honours_metadata(
    server: ServerProcess, client: httpx.Client, redis: RedisProcess,
) -> None:
    predict(client, [60.0])  # stored through REST ...
    wait_for(lambda: _grpc_predict(server, 60.0) == 32.0 and counts(client)[0] > 0)
    hits, misses = counts(client)
    assert _grpc_predict(server, 60.0) == 32.0  # ... answered over gRPC
    assert counts(client) == (hits + 1, misses)
    assert _grpc_predict(server, 60.0, (("cache-control", "no-cache"),)) == 32.0
    assert counts(client) == (hits + 1, misses + 1)
    size = redis.dbsize()
    _grpc_predict(server, 61.0, (("cache-control", "no-store"),))
    time.sleep(0.2)
    assert redis.dbsize() == size


def test_v2_shares_the_cache(
    server: ServerProcess, client: httpx.Client, redis: RedisProcess,
) -> None:
    """V2 infer (REST and gRPC) goes through the same service path: rows stored by a /v1
    predict are hits for V2, and Cache-Control still applies."""
    from proto import open_inference_pb2, open_inference_pb2_grpc

    predict(client, [70.0])  # stored through TF Serving's API ...
    v2_body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [70.0]}]}

    def v2_rest(headers: dict[str, str] | None = None) -> list[float]:
        response = client.post(f"/v2/models/{MODEL}/infer", json=v2_body, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"]

    wait_for(lambda: v2_rest() == [37.0] and counts(client)[0] > 0)
    hits, misses = counts(client)
    assert v2_rest() == [37.0]  # ... answered over V2 REST
    assert counts(client) == (hits + 1, misses)
    assert v2_rest({"Cache-Control": "no-cache"}) == [37.0]
    assert counts(client) == (hits + 1, misses + 1)
    request = open_inference_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(struct.pack("<f", 70.0))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(request, timeout=30)
    assert struct.unpack("<f", reply.raw_output_contents[0]) == (37.0,)  # ... and V2 gRPC
    assert counts(client) == (hits + 2, misses + 1)


def test_admin_listing_shows_hit_ratio(client: httpx.Client) -> None:
    listing = client.get(f"/v1/admin/models/{MODEL}",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert listing.status_code == 200, listing.text
    cache = listing.json()["cache"]
    hits, misses = counts(client)
    assert cache["enabled"] is True and cache["hits"] == hits and cache["misses"] == misses
    assert cache["hit_ratio"] == round(hits / (hits + misses), 4)
    tiny = client.get("/v1/admin/models/tiny", headers={"Authorization": f"Bearer {TOKEN}"})
    assert tiny.json()["cache"] == {"enabled": False}


def test_new_version_never_reads_old_entries(server: ServerProcess, client: httpx.Client) -> None:
    predict(client, [70.0])
    wait_for(lambda: predict(client, [70.0]) == [37.0] and counts(client)[0] > 0)
    shutil.copytree(server.base / "1", server.base / "2")  # type: ignore[attr-defined]
    status = f"/v1/models/{MODEL}/versions/2"
    wait_for(lambda: client.get(status).status_code == 200
             and client.get(status).json()["model_version_status"][0]["state"] == "AVAILABLE",
             timeout=60)
    hits, misses = counts(client)
    assert predict(client, [70.0]) == [37.0]
    assert counts(client) == (hits, misses + 1)  # version 2 missed the version-1 entry


def test_redis_killed_mid_load_and_restarted(client: httpx.Client, server: ServerProcess,
                                             redis: RedisProcess) -> None:
    """Zero failed requests while Redis dies and comes back; the breaker opens and closes."""
    errors_before = metric(client, "tfgate_cache_errors", 'op="get"')
    outcome = asyncio.run(_load_through_outage(server, redis, client))
    assert outcome["failed"] == 0 and outcome["ok"] > 100, outcome
    assert 1.0 in outcome["states"] or 2.0 in outcome["states"], outcome  # opened
    assert outcome["states"][-1] == 0.0, outcome  # closed again
    assert metric(client, "tfgate_cache_errors", 'op="get"') > errors_before
    hits, _ = counts(client)
    predict(client, [90.0])
    wait_for(lambda: predict(client, [90.0]) == [47.0] and counts(client)[0] > hits)


async def _load_through_outage(
    server: ServerProcess, redis: RedisProcess, probe: httpx.Client
) -> dict:
    result: dict = {"ok": 0, "failed": 0, "states": []}
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        async with httpx.AsyncClient(base_url=server.rest_url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                xs = [float(i % 10), 1000.0 + worker * 100000 + i]  # one repeat, one new
                response = await http.post(f"/v1/models/{MODEL}:predict",
                                           json={"instances": [[x] for x in xs]})
                ok = response.status_code == 200 and response.json()["predictions"] == [
                    [x * 0.5 + 2] for x in xs]
                result["ok" if ok else "failed"] += 1
                i += 1

    async def watch() -> None:
        while not stop.is_set():
            result["states"].append(await asyncio.to_thread(breaker_state, probe))
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(load(w)) for w in range(4)] + [asyncio.create_task(watch())]
    await asyncio.sleep(1.0)
    redis.kill()
    await asyncio.sleep(1.5)
    redis.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if len(result["states"]) > 3 and result["states"][-1] == 0.0 and any(
                s != 0.0 for s in result["states"]):
            break
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    result["states"].append(await asyncio.to_thread(breaker_state, probe))
    return result


def test_keys_carry_model_and_version(redis: RedisProcess) -> None:
    raw = redis.command("KEYS", "tfgate:c1:half_plus_two:*")
    assert b"tfgate:c1:half_plus_two:2:" in raw
