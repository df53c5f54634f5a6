"""Triton's own clients (tritonclient.http and tritonclient.grpc) against a running tfgate.

Run by tests/integration/test_v2_clients.py with .venv-v2clients' python (tritonclient pins
protobuf below 7, so it cannot share tfgate's venv):
    python triton_checks.py http|grpc <host:port>
The server serves half_plus_two (TF Serving's test model, version 123), multi_io, strings
and half_precision (tfgate's example exports). Exits non-zero on the first failed check;
prints one line per passed check.
"""

from __future__ import annotations

import sys

import numpy as np


def check(name: str, condition: bool, detail: object = "") -> None:
    if not condition:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


def run(kind: str, url: str) -> None:
    if kind == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    from tritonclient.utils import InferenceServerException

    client = client_module.InferenceServerClient(url=url)
    check("server live", client.is_server_live() is True)
    check("server ready", client.is_server_ready() is True)
    check("model ready", client.is_model_ready("half_plus_two") is True)
    check("model ready by version", client.is_model_ready("half_plus_two", "123") is True)
    check("unknown model not ready", client.is_model_ready("no_such_model") is False)
    metadata = client.get_server_metadata()
    if kind == "grpc":
        metadata = {"name": metadata.name, "extensions": list(metadata.extensions)}
    check("server metadata", metadata["name"] == "tfgate", metadata)
    model = client.get_model_metadata("multi_io")
    if kind == "grpc":
        inputs = {t.name: (t.datatype, list(t.shape)) for t in model.inputs}
        versions = list(model.versions)
    else:
        inputs = {t["name"]: (t["datatype"], t["shape"]) for t in model["inputs"]}
        versions = model["versions"]
    check(
        "model metadata",
        inputs == {"a": ("FP32", [-1, 2]), "b": ("FP32", [-1, 2])} and versions == ["1"],
        (inputs, versions),
    )

    binary_modes = [False, True] if kind == "http" else [True]
    for binary in binary_modes:
        tag = "binary" if binary else "json"
        x = client_module.InferInput("x", [3, 1], "FP32")
        x.set_data_from_numpy(np.array([[1.0], [2.0], [3.0]], np.float32), **_binary(kind, binary))
        result = client.infer("half_plus_two", [x])
        y = result.as_numpy("y")
        check(f"half_plus_two infer ({tag})", np.allclose(y, [[2.5], [3.0], [3.5]]), y)
        response = result.get_response()
        version = response.model_version if kind == "grpc" else response["model_version"]
        check(f"served version reported ({tag})", version == "123", version)

        a = client_module.InferInput("a", [2, 2], "FP32")
        a.set_data_from_numpy(np.array([[1, 2], [3, 4]], np.float32), **_binary(kind, binary))
        b = client_module.InferInput("b", [2, 2], "FP32")
        b.set_data_from_numpy(np.array([[5, 6], [7, 8]], np.float32), **_binary(kind, binary))
        requested = [client_module.InferRequestedOutput("product", **_binary(kind, binary))]
        result = client.infer("multi_io", [a, b], outputs=requested, request_id="req-7")
        check(
            f"multi-input requested output ({tag})",
            np.array_equal(result.as_numpy("product"), [[5, 12], [21, 32]])
            and result.as_numpy("sum") is None,
        )
        response = result.get_response()
        request_id = response.id if kind == "grpc" else response.get("id")
        check(f"request id echoed ({tag})", request_id == "req-7", request_id)

        s = client_module.InferInput("s", [2], "BYTES")
        s.set_data_from_numpy(np.array([b"ab", b"xyz"], dtype=object), **_binary(kind, binary))
        result = client.infer("strings", [s])
        check(
            f"BYTES in and out ({tag})",
            list(result.as_numpy("upper")) == [b"AB", b"XYZ"]
            and list(result.as_numpy("length")) == [2, 3],
            result.as_numpy("upper"),
        )

        h = client_module.InferInput("h", [1, 2], "FP16")
        h.set_data_from_numpy(np.array([[1.5, -2.0]], np.float16), **_binary(kind, binary))
        result = client.infer("half_precision", [h])
        doubled = result.as_numpy("doubled")
        check(
            f"FP16 in and out ({tag})",
            doubled.dtype == np.float16 and np.array_equal(doubled, [[3.0, -4.0]]),
            doubled,
        )

    bad = client_module.InferInput("x", [1, 1], "INT32")
    bad.set_data_from_numpy(np.array([[1]], np.int32))
    try:
        client.infer("half_plus_two", [bad])
    except InferenceServerException as exc:
        check("wrong datatype is a clear error", "expecting FP32" in str(exc), str(exc))
    else:
        check("wrong datatype is refused", False)
    try:
        client.infer("no_such_model", [bad])
    except InferenceServerException as exc:
        check("unknown model is an error", "no_such_model" in str(exc), str(exc))
    else:
        check("unknown model is refused", False)
    client.close()
    print("ALL OK", flush=True)


def _binary(kind: str, binary: bool) -> dict[str, bool]:
    """tritonclient.http takes binary_data=; tritonclient.grpc always sends raw contents."""
    return {"binary_data": binary} if kind == "http" else {}


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
