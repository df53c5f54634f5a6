"""Traffic rules against a real server (docs/experiments.md): weights honoured over
thousands of routing keys (exactly as the pure assignment says, and within binomial
tolerance), a seeded draw without keys, explicit versions that bypass the rule, pin/split
exclusivity, a ramp that advances and one that rolls back on injected errors, shadow
traffic the client never sees and that is dropped under load, statistics that match a
reference computation, gRPC routing, and stickiness across a restart.

Model m serves four versions: 1 and 2 are half_plus_two, 3 is a bool model every float
request fails on (the injected errors), 4 is the 300 ms "slow" model (same outputs as 1)."""

from __future__ import annotations

import concurrent.futures
import math
import pathlib
import statistics
import time

import grpc
import httpx
import pytest

from app.traffic import assign, stats
from tests.integration.test_lifecycle import admin_headers, available, copy_version, wait_for
from tests.serverproc import ServerProcess

CONFIG = (
    'model_config_list { config { name: "m" base_path: "%s" model_platform: "tensorflow" '
    "model_version_policy { all {} } } }\n"
)
BODY = {"instances": [[1.0]]}  # half_plus_two: y = 2.5


def _start(tmp_path: pathlib.Path, log_name: str) -> ServerProcess:
    server = ServerProcess(
        [
            f"--model_config_file={tmp_path / 'models.config'}",
            f"--config={tmp_path / 'tfgate.toml'}",
            f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
            "--file_system_poll_wait_seconds=0",
        ],
        tmp_path / log_name,
    ).start()
    with server.client() as http:
        wait_for(lambda: available(http, "m") == {1, 2, 3, 4}, timeout=120)
    return server


@pytest.fixture(scope="module")
def traffic_server(tmp_path_factory: pytest.TempPathFactory, model_zoo):  # type: ignore[no-untyped-def]
    tmp_path = tmp_path_factory.mktemp("traffic")
    base = tmp_path / "m"
    base.mkdir()
    for version, (name, source) in enumerate(
        [("half_plus_two", 1), ("half_plus_two", 1), ("bools", 1), ("slow", 1)], start=1
    ):
        copy_version(model_zoo.base_path(name) / str(source), base, version)
    (tmp_path / "models.config").write_text(CONFIG % base)
    (tmp_path / "tokens").write_text("s3cret\n")
    (tmp_path / "monitoring.config").write_text(
        'prometheus_config { enable: true path: "/metrics" }\n'
    )
    (tmp_path / "tfgate.toml").write_text(
        f'[admin]\ntokens_file = "{tmp_path / "tokens"}"\n'
        f'state_file = "{tmp_path / "state" / "admin.json"}"\n'
        "load_wait_seconds = 30\n"
    )
    server = _start(tmp_path, "server.log")
    server.tmp = tmp_path  # type: ignore[attr-defined]
    holder = {"server": server}
    yield holder
    holder["server"].stop()


def _put(http: httpx.Client, rule: dict) -> httpx.Response:
    return http.put("/v1/admin/models/m/traffic", json=rule, headers=admin_headers("s3cret"))


def _get(http: httpx.Client) -> dict:
    response = http.get("/v1/admin/models/m/traffic", headers=admin_headers("s3cret"))
    assert response.status_code == 200, response.text
    return response.json()


def _predict(http: httpx.Client, key: str | None = None, path: str = "/v1/models/m:predict",
             request_id: str | None = None) -> httpx.Response:
    headers = {}
    if key is not None:
        headers["X-Tfgate-Routing-Key"] = key
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return http.post(path, json=BODY, headers=headers)


def _served(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[2.5]]}
    return int(response.headers["X-Tfgate-Model-Version"])


def test_weights_honoured_for_routing_keys_and_seeded_draws(traffic_server) -> None:  # type: ignore[no-untyped-def]
    server = traffic_server["server"]
    rule = {"id": "weights", "arms": [{"name": "a", "version": 1, "weight": 30},
                                      {"name": "b", "version": 2, "weight": 70}]}
    keys = [f"user-{i}" for i in range(2000)]
    with server.client() as http:
        assert _put(http, rule).status_code == 200
        served = [_served(_predict(http, key)) for key in keys]
        # exactly the pure assignment's arms (stable hash, same on every replica) ...
        expected = [1 + assign.arm_for_key("weights", k, [30, 70]) for k in keys]
        assert served == expected
        # ... and within 4 binomial standard deviations of the weights
        share = served.count(1) / len(served)
        assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(served))
        # sticky: the same keys again land where they did
        assert [_served(_predict(http, k)) for k in keys[:50]] == served[:50]
        arms = {a["name"]: a for a in _get(http)["arms"]}
        assert arms["a"]["stats"]["requests"] == served.count(1) + served[:50].count(1)
        assert arms["b"]["stats"]["requests"] == served.count(2) + served[:50].count(2)

        # without a key: a seeded draw, the same sequence for the same seed
        seeded = {**rule, "id": "draws", "seed": 11}
        assert _put(http, seeded).status_code == 200
        draws = [_served(_predict(http)) for _ in range(1000)]
        assert abs(draws.count(1) / 1000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 1000)
        assert _put(http, seeded).status_code == 200  # a fresh rule: the draw restarts
        assert [_served(_predict(http)) for _ in range(200)] == draws[:200]


def test_explicit_version_bypasses_and_pin_excludes_split(traffic_server) -> None:  # type: ignore[no-untyped-def]
    server = traffic_server["server"]
    with server.client() as http:
        rule = {"arms": [{"name": "only", "version": 2, "weight": 1}]}
        assert _put(http, rule).status_code == 200
        assert {_served(_predict(http, f"k{i}")) for i in range(20)} == {2}
        assert _served(_predict(http, "k1", "/v1/models/m/versions/1:predict")) == 1
        unload = http.post("/v1/admin/models/m/versions/2/unload",
                           headers=admin_headers("s3cret"))
        assert unload.status_code == 400
        assert unload.json()["error"] == (
            "Version 2 of model m is served by its traffic rule; change or delete the rule first"
        )
        pin = http.post("/v1/admin/models/m/pin", json={"version": 1},
                        headers=admin_headers("s3cret"))
        assert pin.status_code == 400
        assert pin.json()["error"] == (
            "Model m has a traffic rule; delete it before pinning a version"
        )
        described = http.get("/v1/admin/models/m", headers=admin_headers("s3cret")).json()
        assert described["traffic"]["arms"] == {"only": 1.0}
        assert http.delete("/v1/admin/models/m/traffic",
                           headers=admin_headers("s3cret")).status_code == 200
        assert http.get("/v1/admin/models/m/traffic",
                        headers=admin_headers("s3cret")).status_code == 404
        pinned = http.post("/v1/admin/models/m/pin", json={"version": 1},
                           headers=admin_headers("s3cret"))
        assert pinned.status_code == 200, pinned.text
        refused = _put(http, rule)
        assert refused.status_code == 400
        assert refused.json()["error"] == (
            "Model m has a pinned version 1; unpin it before setting a traffic rule"
        )
        assert http.delete("/v1/admin/models/m/pin",
                           headers=admin_headers("s3cret")).status_code == 200
        bad = _put(http, {"arms": [{"name": "x", "version": 9}]})
        assert bad.status_code == 400
        assert "version 9 of model m is not available" in bad.json()["error"]
        invalid = _put(http, {"arms": []})
        assert invalid.status_code == 400
        assert invalid.json()["error"].startswith("Invalid traffic rule: arms")


def test_changing_rules_under_load_drops_no_request(traffic_server) -> None:  # type: ignore[no-untyped-def]
    server = traffic_server["server"]
    rules = [
        {"id": "flip", "arms": [{"name": "a", "version": 1, "weight": 1}]},
        {"id": "flip", "arms": [{"name": "a", "version": 1, "weight": 1},
                                {"name": "b", "version": 2, "weight": 1}]},
        {"id": "other", "arms": [{"name": "b", "version": 2, "weight": 1}]},
    ]

    def client(worker: int) -> list[int]:
        with server.client() as http:
            return [_predict(http, f"w{worker}-{i}").status_code for i in range(60)]

    with server.client() as http, concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, w) for w in range(4)]
        flips = 0
        # every change is an fsync'ed state file write: a few dozen, spread over the run
        while not all(f.done() for f in futures) and flips < 40:
            assert _put(http, rules[flips % 3]).status_code == 200
            if flips % 5 == 4:
                http.delete("/v1/admin/models/m/traffic", headers=admin_headers("s3cret"))
            flips += 1
            time.sleep(0.05)
        codes = [code for f in futures for code in f.result()]
    assert codes == [200] * 240
    assert flips >= 3


def test_ramp_advances_and_rollback_on_injected_errors(traffic_server) -> None:  # type: ignore[no-untyped-def]
    server = traffic_server["server"]
    with server.client() as http:
        ramp = {"id": "ramp", "arms": [{"name": "base", "version": 1},
                                       {"name": "cand", "version": 2}],
                "ramp": {"candidate": "cand", "steps_percent": [0, 100], "step_seconds": 3}}
        assert _put(http, ramp).status_code == 200
        assert {_served(_predict(http, f"r{i}")) for i in range(20)} == {1}
        assert _get(http)["state"]["ramp_step"] == 0
        wait_for(lambda: _get(http)["state"]["ramp_step"] == 1, timeout=10)
        assert {_served(_predict(http, f"r{i}")) for i in range(20)} == {2}

        # candidate v3 fails every request (a bool model): rolled back after 20 on each arm
        failing = {"id": "canary", "arms": [{"name": "base", "version": 1},
                                            {"name": "cand", "version": 3}],
                   "ramp": {"candidate": "cand", "steps_percent": [50], "step_seconds": 60},
                   "rollback": {"min_requests": 20, "max_error_rate_increase": 0.1}}
        assert _put(http, failing).status_code == 200
        codes = [_predict(http, f"c{i}").status_code for i in range(200)]
        assert 400 in codes  # the candidate's errors reached clients until the rollback
        state = _get(http)
        assert state["state"]["rolled_back"] is True
        assert state["state"]["rollback_reason"].startswith("arm cand: error rate 1.0000")
        assert {a["name"]: a["weight"] for a in state["arms"]} == {"base": 1.0, "cand": 0.0}
        assert {_served(_predict(http, f"c{i}")) for i in range(40)} == {1}
        metrics = http.get("/metrics").text
        assert 'tfgate_traffic_rollbacks_total{model="m"} 1' in metrics
        assert 'tfgate_traffic_weight{model="m",arm="cand",version="3"} 0' in metrics
        assert "rolled back to arm base" in pathlib.Path(server.log_path).read_text()


def test_shadow_traffic_is_invisible_and_dropped_under_load(traffic_server) -> None:  # type: ignore[no-untyped-def]
    server = traffic_server["server"]
    with server.client() as http:
        rule = {"id": "shadow", "arms": [{"name": "main", "version": 1}],
                "shadow": {"version": 4, "fraction": 1.0, "max_pending": 1}}
        assert _put(http, rule).status_code == 200

        def one(i: int) -> int:
            with server.client() as client:
                return _served(_predict(client, f"s{i}"))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            served = list(pool.map(one, range(48)))
        assert set(served) == {1}  # every answer from the primary, never the shadow
        shadow = wait_for(
            lambda: (s := _get(http)["shadow"])["sent"] + s["dropped"] == 48
            and s["compared"] == s["sent"] and s,
            timeout=30,
        )
        assert shadow["dropped"] > 0  # the 300 ms shadow cannot keep up: copies dropped
        assert shadow["compared"] >= 1
        assert shadow["max_abs_diff"] == 0.0 and shadow["errors"] == 0


def test_classify_and_regress_send_shadow_copies_too(traffic_server) -> None:  # type: ignore[no-untyped-def]
    """Classify and Regress follow the rule's shadow like Predict: the client gets version 1's
    answer, version 2 (the same export) gets a copy whose outputs agree exactly."""
    server = traffic_server["server"]
    with server.client() as http:
        rule = {"id": "shadow-examples", "arms": [{"name": "main", "version": 1}],
                "shadow": {"version": 2, "fraction": 1.0, "max_pending": 64}}
        assert _put(http, rule).status_code == 200
        classify = http.post("/v1/models/m:classify", json={
            "signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
        assert classify.status_code == 200, classify.text
        assert classify.json() == {"results": [[["", 3.0]]]}
        assert classify.headers["X-Tfgate-Model-Version"] == "1"
        regress = http.post("/v1/models/m:regress", json={
            "signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 80.0}]})
        assert regress.status_code == 200, regress.text
        assert regress.json() == {"results": [3.0, 42.0]}
        shadow = wait_for(
            lambda: (s := _get(http)["shadow"])["compared"] == 2 and s, timeout=30
        )
        assert shadow["sent"] == 2 and shadow["dropped"] == 0 and shadow["errors"] == 0
        assert shadow["max_abs_diff"] == 0.0


def test_outcome_statistics_match_a_reference(traffic_server) -> None:  # type: ignore[no-untyped-def]
    server = traffic_server["server"]
    with server.client() as http:
        rule = {"id": "outcomes", "arms": [{"name": "control", "version": 1},
                                           {"name": "treat", "version": 2}]}
        assert _put(http, rule).status_code == 200
        keys = [f"visitor-{i}" for i in range(400)]
        arm_of = {k: assign.arm_for_key("outcomes", k, [1, 1]) for k in keys}
        # known data: control converts every 5th visitor, treatment every 3rd
        counts = [[0, 0], [0, 0]]  # per arm: conversions, trials
        for i, key in enumerate(keys):
            arm = arm_of[key]
            converted = i % (5 if arm == 0 else 3) == 0
            counts[arm][0] += converted
            counts[arm][1] += 1
            posted = http.post("/v1/admin/models/m/traffic/outcomes",
                               json={"routing_key": key, "conversion": converted},
                               headers=admin_headers("s3cret"))
            assert posted.status_code == 200, posted.text
        # a reward by request id, for a request the rule routed
        response = _predict(http, "visitor-0", request_id="req-0001")
        assert response.headers["X-Tfgate-Request-Id"] == "req-0001"
        by_id = http.post("/v1/admin/models/m/traffic/outcomes",
                          json={"request_id": "req-0001", "conversion": True},
                          headers=admin_headers("s3cret"))
        assert by_id.json()["arm"] == ["control", "treat"][arm_of["visitor-0"]]
        counts[arm_of["visitor-0"]][0] += 1
        counts[arm_of["visitor-0"]][1] += 1
        unknown = http.post("/v1/admin/models/m/traffic/outcomes",
                            json={"request_id": "never-seen", "conversion": True},
                            headers=admin_headers("s3cret"))
        assert unknown.status_code == 404

        arms = {a["name"]: a["stats"] for a in _get(http)["arms"]}
        (s0, n0), (s1, n1) = counts
        # reference: the textbook pooled two-proportion z-test
        pooled = (s0 + s1) / (n0 + n1)
        z = (s1 / n1 - s0 / n0) / math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
        assert arms["control"]["conversion_rate"] == pytest.approx(s0 / n0, abs=1e-6)
        assert arms["treat"]["conversion_rate"] == pytest.approx(s1 / n1, abs=1e-6)
        assert arms["control"]["p_value"] is None
        assert arms["treat"]["statistic"] == pytest.approx(z, abs=1e-6)
        assert arms["treat"]["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)),
                                                        abs=1e-9)
        low, high = stats.wilson_interval(s1, n1)
        assert (arms["treat"]["ci_low"], arms["treat"]["ci_high"]) == (
            pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))

        # rewards on a fresh rule: Welch's t-test against the baseline
        assert _put(http, {**rule, "id": "rewards"}).status_code == 200
        rewards: list[list[float]] = [[], []]
        for i, key in enumerate(keys[:120]):
            arm = assign.arm_for_key("rewards", key, [1, 1])
            value = (i % 7) * 1.5 + (2.0 if arm else 0.0)
            rewards[arm].append(value)
            posted = http.post("/v1/admin/models/m/traffic/outcomes",
                               json={"routing_key": key, "reward": value},
                               headers=admin_headers("s3cret"))
            assert posted.status_code == 200, posted.text
        arms = {a["name"]: a["stats"] for a in _get(http)["arms"]}
        a, b = rewards
        assert arms["treat"]["mean_reward"] == pytest.approx(statistics.mean(b), abs=1e-6)
        t, _, p = stats.welch_t_test(statistics.mean(a), statistics.variance(a), len(a),
                                     statistics.mean(b), statistics.variance(b), len(b))  # type: ignore[misc]
        assert arms["treat"]["statistic"] == pytest.approx(t, abs=1e-5)
        assert arms["treat"]["p_value"] == pytest.approx(p, abs=1e-8)


def test_grpc_routing_key_and_admin_service(traffic_server) -> None:  # type: ignore[no-untyped-def]
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from proto import admin_pb2, admin_pb2_grpc

    server = traffic_server["server"]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    auth = (("authorization", "Bearer s3cret"),)
    rule = '{"id": "grpc", "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]}'
    admin.SetTraffic(admin_pb2.TrafficRuleRequest(name="m", rule_json=rule), metadata=auth)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[1.0],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)] * 2)))
    for i in range(30):
        key = f"g{i}"
        reply = stub.Predict(request, metadata=(("x-tfgate-routing-key", key),), timeout=30)
        assert reply.model_spec.version.value == 1 + assign.arm_for_key("grpc", key, [1, 1])
    outcome = admin.ReportOutcome(
        admin_pb2.OutcomeRequest(name="m", routing_key="g0", conversion=True), metadata=auth)
    assert '"recorded":true' in outcome.json
    described = admin.GetTraffic(admin_pb2.ModelRequest(name="m"), metadata=auth)
    assert '"requests":' in described.json and '"rule_id":"grpc"' in described.json
    admin.DeleteTraffic(admin_pb2.ModelRequest(name="m"), metadata=auth)
    with pytest.raises(grpc.RpcError) as missing:
        admin.GetTraffic(admin_pb2.ModelRequest(name="m"), metadata=auth)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "Model m has no traffic rule"
    channel.close()


def test_v2_infer_follows_the_rule_and_reports_the_arm(traffic_server) -> None:  # type: ignore[no-untyped-def]
    """The Open Inference Protocol goes through the same resolve step: a routing key picks the
    same arm on V2 REST and V2 gRPC as on TF Serving's API, and outcomes name V2's `id`."""
    from proto import open_inference_pb2 as pb
    from proto import open_inference_pb2_grpc

    server = traffic_server["server"]
    rule = {"id": "v2", "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]}
    v2_body = {"id": "v2-req-1",
               "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        with server.client() as http:
            assert _put(http, rule).status_code == 200
            for i in range(20):
                key = f"v2-{i}"
                arm_version = 1 + assign.arm_for_key("v2", key, [1, 1])
                reply = http.post("/v2/models/m/infer", json=v2_body,
                                  headers={"X-Tfgate-Routing-Key": key})
                assert reply.status_code == 200, reply.text
                assert reply.json()["model_version"] == str(arm_version)
                assert reply.headers["X-Tfgate-Model-Version"] == str(arm_version)
                assert reply.headers["X-Tfgate-Request-Id"] == "v2-req-1"
                assert _served(_predict(http, key)) == arm_version  # TF Serving's API agrees
                request = pb.ModelInferRequest(model_name="m", id=f"g-{i}")
                tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
                tensor.contents.fp32_contents.append(1.0)
                answer = stub.ModelInfer(
                    request, metadata=(("x-tfgate-routing-key", key),), timeout=30
                )
                assert answer.model_version == str(arm_version)
            # an explicit version in the V2 path bypasses the rule
            pinned = http.post("/v2/models/m/versions/2/infer", json=v2_body,
                               headers={"X-Tfgate-Routing-Key": "v2-0"})
            assert pinned.json()["model_version"] == "2"
            outcome = http.post("/v1/admin/models/m/traffic/outcomes",
                                json={"request_id": "g-0", "conversion": True},
                                headers=admin_headers("s3cret"))
            assert outcome.status_code == 200 and outcome.json()["recorded"] is True, outcome.text
            assert http.delete("/v1/admin/models/m/traffic",
                               headers=admin_headers("s3cret")).status_code == 200
    finally:
        channel.close()


def test_multi_inference_follows_the_rule_and_counts_on_its_arm(traffic_server) -> None:  # type: ignore[no-untyped-def]
    """MultiInference with no version in its first ModelSpec is routed like Classify and
    Regress: the routing key's arm serves every task, and the call counts on that arm."""
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow_serving.apis import inference_pb2, prediction_service_pb2_grpc

    server = traffic_server["server"]
    rule = {"id": "multi", "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]}
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "m"
        task.model_spec.signature_name = signature
    request.input.example_list.examples.append(example_pb2.Example(
        features=feature_pb2.Features(feature={"x": feature_pb2.Feature(
            float_list=feature_pb2.FloatList(value=[2.0]))})))
    try:
        with server.client() as http:
            assert _put(http, rule).status_code == 200
            served = {1: 0, 2: 0}
            for i in range(24):
                key = f"multi-{i}"
                arm_version = 1 + assign.arm_for_key("multi", key, [1, 1])
                reply = stub.MultiInference(
                    request, metadata=(("x-tfgate-routing-key", key),), timeout=30
                )
                assert [r.model_spec.version.value for r in reply.results] == [arm_version] * 2
                assert reply.results[0].regression_result.regressions[0].value == 3.0
                served[arm_version] += 1
            arms = {a["name"]: a["stats"]["requests"] for a in _get(http)["arms"]}
            assert arms == {"a": served[1], "b": served[2]}
            assert min(served.values()) > 0
            # an explicit version still bypasses the rule
            request.tasks[0].model_spec.version.value = 2
            request.tasks[1].model_spec.version.value = 2
            pinned = stub.MultiInference(request, timeout=30)
            assert [r.model_spec.version.value for r in pinned.results] == [2, 2]
            assert {a["name"]: a["stats"]["requests"] for a in _get(http)["arms"]} == arms
    finally:
        channel.close()


def test_bandit_moves_weight_to_the_arm_that_converts(traffic_server) -> None:  # type: ignore[no-untyped-def]
    """Thompson sampling through the admin API: arm b converts, arm a never does; after the
    outcomes the rule's weights favour b, and keyless requests follow the new weights."""
    server = traffic_server["server"]
    rule = {"id": "bandit", "bandit": True, "seed": 11,
            "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]}
    with server.client() as http:
        assert _put(http, rule).status_code == 200
        assert [a["weight"] for a in _get(http)["arms"]] == [0.5, 0.5]
        keys = [f"bandit-{i}" for i in range(200)]
        for key in keys:
            arm = assign.arm_for_key("bandit", key, [1, 1])
            posted = http.post("/v1/admin/models/m/traffic/outcomes",
                               json={"routing_key": key, "conversion": arm == 1},
                               headers=admin_headers("s3cret"))
            assert posted.status_code == 200, posted.text
        weights = {a["name"]: a["weight"] for a in _get(http)["arms"]}
        assert weights["b"] > 0.9, weights
        versions = [_served(_predict(http)) for _ in range(200)]
        assert versions.count(2) > 160, versions.count(2)
        assert http.delete("/v1/admin/models/m/traffic",
                           headers=admin_headers("s3cret")).status_code == 200


def test_rule_and_stickiness_survive_a_restart(traffic_server) -> None:  # type: ignore[no-untyped-def]
    server = traffic_server["server"]
    rule = {"id": "sticky", "arms": [{"name": "a", "version": 1, "weight": 1},
                                     {"name": "b", "version": 2, "weight": 1}]}
    keys = [f"returning-{i}" for i in range(100)]
    with server.client() as http:
        assert _put(http, rule).status_code == 200
        before = [_served(_predict(http, k)) for k in keys]
    assert set(before) == {1, 2}
    server.stop()
    restarted = _start(server.tmp, "restarted.log")
    restarted.tmp = server.tmp  # type: ignore[attr-defined]
    traffic_server["server"] = restarted
    with restarted.client() as http:
        assert _get(http)["rule"]["id"] == "sticky"
        assert [_served(_predict(http, k)) for k in keys] == before
