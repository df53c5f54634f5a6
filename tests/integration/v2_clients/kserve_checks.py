"""KServe's Python SDK against tfgate, and tfgate's KServe manifests loaded into the SDK's models.

Run by tests/integration/test_v2_clients.py with .venv-v2clients' python (the SDK pins
protobuf below 7 and its own web stack, so it cannot share tfgate's venv):
    python kserve_checks.py serve <rest base url> <grpc host:port>
    python kserve_checks.py manifests <servingruntime.yaml> <inferenceservice.yaml>
The server serves half_plus_two (TF Serving's test model, version 123) and multi_io. Exits
non-zero on the first failed check; prints one line per passed check.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np


def check(name: str, condition: bool, detail: object = "") -> None:
    if not condition:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


async def serve_checks(base_url: str, grpc_url: str) -> None:
    import httpx
    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    check("server live (REST v2)", await client.is_server_live(base_url) is True)
    check("server ready (REST v2)", await client.is_server_ready(base_url) is True)
    check("model ready (REST v2)", await client.is_model_ready(base_url, "half_plus_two"))
    check("unknown model not ready", not await client.is_model_ready(base_url, "no_such"))

    for binary in (False, True):
        tag = "binary" if binary else "json"
        x = InferInput("x", [2, 1], "FP32")
        x.set_data_from_numpy(np.array([[1.0], [4.0]], np.float32), binary_data=binary)
        request = InferRequest("half_plus_two", [x], request_id="k1")
        response = await client.infer(base_url, request, model_name="half_plus_two")
        y = response.outputs[0].as_numpy()
        check(f"half_plus_two infer ({tag})", np.allclose(y, [[2.5], [4.0]]), y)
        # (the SDK's REST reader drops model_version; triton_checks.py checks it)
        check(f"request id echoed ({tag})", response.id == "k1", response.id)

        a = InferInput("a", [1, 2], "FP32")
        a.set_data_from_numpy(np.array([[1, 2]], np.float32), binary_data=binary)
        b = InferInput("b", [1, 2], "FP32")
        b.set_data_from_numpy(np.array([[3, 5]], np.float32), binary_data=binary)
        outputs = [RequestedOutput("sum", parameters={"binary_data": binary})]
        request = InferRequest("multi_io", [a, b], request_outputs=outputs)
        response = await client.infer(base_url, request, model_name="multi_io")
        names = [o.name for o in response.outputs]
        check(
            f"multi-input, requested output ({tag})",
            names == ["sum"] and np.array_equal(response.outputs[0].as_numpy(), [[4, 7]]),
            names,
        )

    x = InferInput("x", [1, 1], "INT64")
    x.set_data_from_numpy(np.array([[1]], np.int64), binary_data=False)
    try:
        await client.infer(base_url, InferRequest("half_plus_two", [x]), model_name="half_plus_two")
    except httpx.HTTPStatusError as exc:
        check(
            "bad datatype: 400 with V2's error",
            exc.response.status_code == 400 and "expecting FP32" in exc.response.json()["error"],
            exc,
        )
    else:
        check("bad datatype refused", False)
    await client.close()

    from kserve import InferenceGRPCClient

    grpc_client = InferenceGRPCClient(grpc_url, timeout=30)
    x = InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
    response = await grpc_client.infer(InferRequest("half_plus_two", [x]))
    check(
        "half_plus_two infer (gRPC v2)",
        np.allclose(response.outputs[0].as_numpy(), [2.5, 3.0, 3.5]),
        response.outputs,
    )
    await grpc_client.close()
    print("ALL OK", flush=True)


def manifest_checks(runtime_path: str, service_path: str) -> None:
    import yaml
    from kserve import V1alpha1ClusterServingRuntime, V1beta1InferenceService

    def load(path: str, kind: str):  # type: ignore[no-untyped-def]
        with open(path) as f:
            document = yaml.safe_load(f)
        return build(document, model_class(kind), kind)

    runtime = load(runtime_path, "V1alpha1ClusterServingRuntime")
    check("runtime is a ClusterServingRuntime", isinstance(runtime, V1alpha1ClusterServingRuntime))
    spec = runtime.spec
    formats = {(f.name, f.version, f.auto_select) for f in spec.supported_model_formats}
    check("runtime declares tensorflow", ("tensorflow", "2", True) in formats, formats)
    check(
        "runtime declares both protocols",
        set(spec.protocol_versions) == {"v1", "v2", "grpc-v1", "grpc-v2"},
        spec.protocol_versions,
    )
    (container,) = spec.containers
    check("runtime container is kserve-container", container.name == "kserve-container")
    check(
        "runtime serves /mnt/models under the ISVC's name",
        "--model_base_path=/mnt/models" in container.args
        and "--model_name={{.Name}}" in container.args,
        container.args,
    )
    check("REST on KServe's 8080", "--rest_api_port=8080" in container.args, container.args)

    service = load(service_path, "V1beta1InferenceService")
    check("InferenceService loads", isinstance(service, V1beta1InferenceService))
    model = service.spec.predictor.model
    check(
        "InferenceService picks tfgate for tensorflow over V2",
        model.model_format.name == "tensorflow"
        and model.runtime == runtime.metadata.name
        and model.protocol_version == "v2"
        and bool(model.storage_uri),
        model,
    )
    print("ALL OK", flush=True)


def model_class(name: str) -> type | None:
    """A KServe model class, else a Kubernetes one (KServe's models hold V1ObjectMeta,
    V1Container, ...), else None (a primitive or free-form type)."""
    import kserve.models
    import kubernetes.client.models

    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)


def build(document: object, klass: type | None, where: str) -> object:
    """The SDK's model object for a YAML document, built through the models' own
    constructors (attribute_map / openapi_types, as the SDK's deserializer does), failing on
    any key the model does not have: a misspelt field must not pass unseen."""
    import re

    if klass is None or not isinstance(document, dict):
        return document
    by_json_name = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    kwargs = {}
    for key, value in document.items():
        if key not in by_json_name:
            check(f"{where}.{key} is a field of {klass.__name__}", False, sorted(by_json_name))
        attr = by_json_name[key]
        type_name = klass.openapi_types[attr]
        listed = re.fullmatch(r"(?:list|List)\[(.*)\]", type_name)
        mapped = re.fullmatch(r"(?:dict\(str, (.*)\)|Dict\[str, (.*)\])", type_name)
        if listed:
            item_class = model_class(listed.group(1))
            kwargs[attr] = [build(v, item_class, f"{where}.{key}") for v in value]
        elif mapped:
            item_class = model_class(mapped.group(1) or mapped.group(2))
            kwargs[attr] = {k: build(v, item_class, f"{where}.{key}") for k, v in value.items()}
        else:
            kwargs[attr] = build(value, model_class(type_name), f"{where}.{key}")
    return klass(**kwargs)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve_checks(sys.argv[2], sys.argv[3]))
    else:
        manifest_checks(sys.argv[2], sys.argv[3])
