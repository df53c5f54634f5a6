"""TF Serving's per-API checks on a signature and on a model's outputs, shared by REST and
gRPC through serving/service.py (and serving/multi_inference.py): pure functions of numpy arrays and
SignatureSpecs, raising ServingError with TF Serving's texts (predict_util.cc,
classifier.cc, regressor.cc).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from app.core.errors import Code, ServingError
from app.core.types import SignatureSpec


def decoded_examples(decode: Callable[[], list[bytes]]) -> list[bytes]:
    examples = decode()
    if not examples:
        raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")
    return examples


def check_predict_inputs(signature: SignatureSpec, inputs: dict[str, np.ndarray]) -> None:
    """TF Serving's input-key check (predict_util.cc): sent keys must match the signature's,
    except that inputs with a default may be left out."""
    expected = set(signature.inputs)
    sent = set(inputs)
    required = expected - signature.inputs_with_defaults
    if sent <= expected and required <= sent:
        return
    extra = sorted(sent - expected)
    missing = sorted(required - sent)
    raise ServingError(
        Code.INVALID_ARGUMENT,
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
        f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.",
    )


def select_outputs(signature: SignatureSpec, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(signature.outputs))}}}.",
            )
        if alias in seen:
            raise ServingError(Code.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


def classify_aliases(signature: SignatureSpec) -> tuple[str, str | None, str | None]:
    """PreProcessClassification's shape checks (INVALID_ARGUMENT since TF Serving's 2020 TF2
    change; before it the missing-alias cases were FAILED_PRECONDITION). TF Serving appends
    the SignatureDef's DebugString where tfgate names the signature's key."""
    if len(signature.inputs) != 1:
        raise ServingError(Code.INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise ServingError(
            Code.INVALID_ARGUMENT,
            f"Expected one or two output Tensors, found {len(signature.outputs)}",
        )
    if "inputs" not in signature.inputs:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            f"No classification inputs found in SignatureDef: {signature.key}",
        )
    classes = "classes" if "classes" in signature.outputs else None
    scores = "scores" if "scores" in signature.outputs else None
    if classes is None and scores is None:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {signature.key}',
        )
    return "inputs", classes, scores


def regress_aliases(signature: SignatureSpec) -> tuple[str, str]:
    if len(signature.inputs) != 1:
        raise ServingError(Code.INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise ServingError(Code.INVALID_ARGUMENT, "Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            f"No regression inputs found in SignatureDef: {signature.key}",
        )
    if "outputs" not in signature.outputs:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            f"No regression outputs found in SignatureDef: {signature.key}",
        )
    return "inputs", "outputs"


def _shape_text(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def check_classify_outputs(
    classes: np.ndarray | None, scores: np.ndarray | None, num_examples: int
) -> None:
    for name, tensor, dtype_ok, dtype_name in (
        ("classes", classes, lambda t: t.dtype == object, "DT_STRING"),
        ("scores", scores, lambda t: t.dtype == np.float32, "DT_FLOAT"),
    ):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(tensor)}",
            )
        if not dtype_ok(tensor):
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Expected {name} Tensor of {dtype_name}. Got: {tensor.dtype}",
            )
        if tensor.shape[0] != num_examples:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Expected {name} output batch size of {num_examples}. Got: {tensor.shape[0]}",
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}",
        )


def check_regress_output(outputs: np.ndarray, num_examples: int) -> np.ndarray:
    if not (outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)):
        raise ServingError(
            Code.INVALID_ARGUMENT,
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
            f"but got {_shape_text(outputs)}",
        )
    if outputs.shape[0] != num_examples:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            f"Input batch size did not match output batch size: {num_examples} vs. "
            f"{outputs.shape[0]}",
        )
    if outputs.dtype != np.float32:
        raise ServingError(
            Code.INVALID_ARGUMENT, f"Expected output Tensor of DT_FLOAT.  Got: {outputs.dtype}"
        )
    return outputs.reshape(-1)


def string_tensor(values: list[bytes]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
