"""gRPC MultiInference: several classify / regress tasks over one Input on one servable.

Data path position: grpc_services.PredictionServicer.MultiInference -> (here) task checks ->
service.run_classify / run_regress per task (concurrently, batcher -> worker) -> one
MultiInferenceResponse. TF Serving (multi_inference.cc) feeds the serialized examples to
every task's input tensor in one Session::Run; tfgate runs each task's signature on its own,
which gives the same results, so tasks whose signatures have different input tensors (every
TF2 export) are served as TF Serving serves them.
"""

from __future__ import annotations

import asyncio
import dataclasses

from app.codec import example as codec_example
from app.codec.tensor import TensorBudget
from app.core.errors import Code, ServingError
from app.core.protos import inference_pb2
from app.core.signatures import ServableMetadata
from app.core.types import DEFAULT_SIGNATURE, ServableId, SignatureSpec
from app.serving.service import CLASSIFY_METHOD, REGRESS_METHOD, ServingService
from app.serving.signature_checks import classify_aliases, regress_aliases


@dataclasses.dataclass(frozen=True)
class Task:
    signature: SignatureSpec
    method: str  # CLASSIFY_METHOD or REGRESS_METHOD


def check_tasks(
    request: inference_pb2.MultiInferenceRequest,
    metadata: ServableMetadata,
    service: ServingService,
) -> list[Task]:
    """TF Serving's per-task checks, in its order and with its texts, all before any task
    runs: a model name, the same one in every task, no signature twice, the signature
    exists, and the method is classify or regress with a signature fit for it."""
    model_name = ""
    seen: set[str] = set()
    tasks: list[Task] = []
    for task in request.tasks:
        name = task.model_spec.name
        if not name:
            raise ServingError(Code.INVALID_ARGUMENT, "Found ModelSpec with an empty model name.")
        if model_name and name != model_name:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
            )
        model_name = name
        key = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if key in seen:
            raise ServingError(Code.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        signature = metadata.signatures.get(key)
        if signature is None:
            raise ServingError(
                Code.INVALID_ARGUMENT, f"Requested signature not found in model graph: {key}"
            )
        # PreProcessClassification / PreProcessRegression: the method-name check (when on),
        # then the signature's shape.
        if task.method_name == CLASSIFY_METHOD:
            service.check_method_name(signature, CLASSIFY_METHOD)
            classify_aliases(signature)
        elif task.method_name == REGRESS_METHOD:
            service.check_method_name(signature, REGRESS_METHOD)
            regress_aliases(signature)
        else:
            raise ServingError(
                Code.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
            )
        tasks.append(Task(signature, task.method_name))
    return tasks


async def run(
    service: ServingService,
    request: inference_pb2.MultiInferenceRequest,
    servable: ServableId,
    tasks: list[Task],
    deadline: float | None,
    budget: TensorBudget | None = None,
) -> list[inference_pb2.InferenceResult]:
    """Every task on `servable`, concurrently; the first failing task in request order
    decides the error. As in TF Serving, MultiInference records no request_count,
    request_latency or runtime_latency, and request_example_counts once per call. The
    examples are charged to `budget` (the request's tensor limit) before they are built."""
    examples = codec_example.examples_from_input_proto(request.input, budget)
    # The version stays loaded until every task is done (the tasks start on a later loop
    # iteration, when an unload could otherwise already have begun).
    service.registry.acquire(servable)
    try:
        outcomes = await asyncio.gather(
            *(_run_task(service, servable, task, examples, deadline) for task in tasks),
            return_exceptions=True,
        )
    finally:
        service.registry.release(servable)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    service.record_examples(servable.model, len(examples))
    return [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]


async def _run_task(
    service: ServingService,
    servable: ServableId,
    task: Task,
    examples: list[bytes],
    deadline: float | None,
) -> inference_pb2.InferenceResult:
    result = inference_pb2.InferenceResult()
    if task.method == CLASSIFY_METHOD:
        classified = await service.run_classify(
            servable, task.signature, lambda: examples, deadline=deadline, api=None
        )
        result.classification_result.CopyFrom(
            codec_example.classification_result_proto(classified.classes, classified.scores)
        )
    else:
        regressed = await service.run_regress(
            servable, task.signature, lambda: examples, deadline=deadline, api=None
        )
        result.regression_result.CopyFrom(codec_example.regression_result_proto(regressed.outputs))
    return result
