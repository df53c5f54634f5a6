"""TF Serving's gRPC servicers: tensorflow.serving.PredictionService and ModelService.

Data path position: gRPC request -> (here) ModelSpec + codec_proto / codec_example decode ->
serving/service.py -> codec_proto / codec_example encode -> gRPC response. The servicers only
translate: every model lookup, signature check and run goes through ServingService, so REST
and gRPC report the same errors. A ServingError becomes the gRPC status with the same code
number and TF Serving's (truncated) message; anything else is logged and answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import text_format

from app.admin.tokens import AdminTokens
from app.codec import example as codec_example
from app.codec import status as codec_status
from app.codec import tensor_proto as codec_proto
from app.codec.tensor import TensorBudget, request_budget
from app.core.errors import Code, ServingError
from app.core.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from app.core.types import DEFAULT_SIGNATURE, ModelSpec
from app.serving import multi_inference
from app.serving.auth import InferenceAuth, credential_from
from app.serving.observation import MAX_ROUTING_KEY_CHARS
from app.serving.service import Entrypoint, ServingService
from app.settings import model_config
from app.settings.model_config import ModelConfig

log = logging.getLogger("tfgate.grpc")

SIGNATURE_DEF_FIELD = "signature_def"

Response = TypeVar("Response")


# --- request -> tfgate types ---


def model_spec_from_proto(proto: model_pb2.ModelSpec) -> ModelSpec:
    """ModelSpec proto -> app.core.types.ModelSpec, with ServerCore's empty-name error.
    `version` and `version_label` are a oneof, so at most one of them is set."""
    if not proto.name:
        raise ServingError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    choice = proto.WhichOneof("version_choice")
    return ModelSpec(
        name=proto.name,
        version=proto.version.value if choice == "version" else None,
        label=proto.version_label if choice == "version_label" else None,
        signature_name=proto.signature_name,
    )


def required_model_spec(request: Any) -> ModelSpec:
    if not request.HasField("model_spec"):
        raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
    return model_spec_from_proto(request.model_spec)


def fill_model_spec(
    target: model_pb2.ModelSpec, name: str, version: int, signature_name: str | None
) -> None:
    """TF Serving's MakeModelSpec: name, the served version, and the signature name
    (empty -> serving_default) when the API reports one."""
    target.Clear()
    target.name = name
    if signature_name is not None:
        target.signature_name = signature_name or DEFAULT_SIGNATURE
    target.version.value = version


def loop_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the event loop's clock (what the batcher compares with)."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + max(0.0, remaining)


def cache_control(context: grpc.aio.ServicerContext) -> str | None:
    """The call's `cache-control` metadata (no-cache / no-store) for the result cache, as
    REST's Cache-Control header (docs/cache.md). gRPC metadata keys are lower case."""
    for key, value in context.invocation_metadata() or ():
        if key == "cache-control":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def routing_metadata(context: grpc.aio.ServicerContext) -> dict[str, str | None]:
    """`x-tfgate-routing-key` (requests with the same key land on the same arm of a traffic
    rule) and `x-request-id` (what an outcome names the request by), from the metadata."""
    routing_key = request_id = None
    for key, value in context.invocation_metadata() or ():
        if key == "x-tfgate-routing-key":
            routing_key = value if isinstance(value, str) else value.decode("latin-1")
        elif key == "x-request-id":
            request_id = value if isinstance(value, str) else value.decode("latin-1")
    if routing_key is not None and len(routing_key) > MAX_ROUTING_KEY_CHARS:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            f"x-tfgate-routing-key is longer than {MAX_ROUTING_KEY_CHARS} characters",
        )
    if request_id is not None and len(request_id) > MAX_ROUTING_KEY_CHARS:
        request_id = None  # not one an outcome could name
    return {"routing_key": routing_key or None, "request_id": request_id or None}


# --- error translation ---


def translated(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Wrap a servicer method: ServingError -> its gRPC status; an unexpected exception is
    logged with its traceback and answered INTERNAL (never a silent UNKNOWN)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await abort(context, exc.grpc_status, exc.grpc_message())
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("gRPC %s failed unexpectedly", method.__name__)
            message = ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}").grpc_message()
            await abort(context, grpc.StatusCode.INTERNAL, message)
        raise AssertionError("abort() returned")  # abort always raises

    return wrapper


def call_metadata(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    """The call's metadata by lower-case key (what the auth checks read)."""
    return {k.lower(): v for k, v in (context.invocation_metadata() or ())}


def authorize(auth: InferenceAuth, context: grpc.aio.ServicerContext, model: str) -> None:
    """Inference auth (app/serving/auth.py) from the call's metadata, when keys are configured."""
    if auth.enabled:
        metadata = call_metadata(context)
        credential = credential_from(metadata.get("authorization"), metadata.get("x-api-key"))
        auth.check(credential, model)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """context.abort(), unless the RPC already ended: when the client's deadline passes at the
    moment the service reports DEADLINE_EXCEEDED, gRPC has closed the call and sending a
    status fails. There is no one left to answer; end the handler as gRPC does for a
    cancelled call (CancelledError), not with a logged internal error."""
    try:
        await context.abort(code, message)
    except grpc.aio.AbortError:
        raise
    except Exception:
        if context.done():
            raise asyncio.CancelledError from None
        raise


# --- PredictionService ---


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService on top of ServingService. Event-loop only."""

    def __init__(
        self,
        service: ServingService,
        *,
        use_tensor_content: bool,
        auth: InferenceAuth | None = None,
        max_tensor_bytes: int = 0,
    ) -> None:
        self.service = service
        self.auth = auth or InferenceAuth.disabled()
        # --enable_serialization_as_tensor_content: outputs as raw bytes, not *_val fields
        self.use_tensor_content = use_tensor_content
        # the bytes one request's decoded tensors may take (settings.request_tensor_limit_bytes);
        # 0: unbounded (unit tests)
        self.max_tensor_bytes = max_tensor_bytes


    @translated
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        spec = required_model_spec(request)
        authorize(self.auth, context, spec.name)
        result = await self.service.predict(
            spec,
            lambda _signature: decode_inputs(request, request_budget(self.max_tensor_bytes)),
            output_filter=list(request.output_filter),
            deadline=loop_deadline(context),
            entrypoint=Entrypoint.GRPC,
            cache_control=cache_control(context),
            **routing_metadata(context),
        )
        response = predict_pb2.PredictResponse()
        fill_model_spec(response.model_spec, spec.name, result.servable.version, result.signature)
        outputs = response.outputs
        for alias, array in result.outputs.items():
            # written in place: building each TensorProto apart and CopyFrom()-ing it into
            # the map copied every output once more per call
            codec_proto.fill_tensor_proto(
                outputs[alias], array, use_tensor_content=self.use_tensor_content
            )
        return response

    @translated
    async def Classify(
        self,
        request: classification_pb2.ClassificationRequest,
        context: grpc.aio.ServicerContext,
    ) -> classification_pb2.ClassificationResponse:
        spec = required_model_spec(request)
        authorize(self.auth, context, spec.name)
        result = await self._run_with_examples(self.service.classify, spec, request, context)
        response = classification_pb2.ClassificationResponse()
        fill_model_spec(response.model_spec, spec.name, result.servable.version, result.signature)
        response.result.CopyFrom(
            codec_example.classification_result_proto(result.classes, result.scores)
        )
        return response

    @translated
    async def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        spec = required_model_spec(request)
        authorize(self.auth, context, spec.name)
        result = await self._run_with_examples(self.service.regress, spec, request, context)
        response = regression_pb2.RegressionResponse()
        fill_model_spec(response.model_spec, spec.name, result.servable.version, result.signature)
        response.result.CopyFrom(codec_example.regression_result_proto(result.outputs))
        return response

    async def _run_with_examples(
        self,
        run: Callable[..., Awaitable[Response]],
        spec: ModelSpec,
        request: Any,
        context: grpc.aio.ServicerContext,
    ) -> Response:
        """service.classify / service.regress on the request's Input, which the service
        decodes only after its model and signature checks (TF Serving's order)."""
        return await run(
            spec,
            lambda: codec_example.examples_from_input_proto(
                request.input, request_budget(self.max_tensor_bytes)
            ),
            deadline=loop_deadline(context),
            entrypoint=Entrypoint.GRPC,
            cache_control=cache_control(context),
            **routing_metadata(context),
        )

    @translated
    async def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        # TF Serving resolves the servable from the first task's ModelSpec, then checks all
        # tasks against that one servable's signatures before anything runs.
        first = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        authorize(self.auth, context, first.name)
        # A first ModelSpec with no version or label follows the model's traffic rule, and the
        # call counts on the arm that served it, like Classify and Regress.
        routing = routing_metadata(context)
        servable, metadata, routed = self.service.resolve_routed(
            model_spec_from_proto(first), routing["routing_key"]
        )
        with self.service.arm_observed(routed, routing["request_id"]):
            tasks = multi_inference.check_tasks(request, metadata, self.service)
            results = await multi_inference.run(
                self.service,
                request,
                servable,
                tasks,
                loop_deadline(context),
                request_budget(self.max_tensor_bytes),
            )
        response = inference_pb2.MultiInferenceResponse()
        for task, result in zip(request.tasks, results, strict=True):
            # MakeModelSpec with the task's own signature name (empty -> serving_default)
            fill_model_spec(
                result.model_spec,
                task.model_spec.name,
                servable.version,
                task.model_spec.signature_name,
            )
            response.results.append(result)
        return response

    @translated
    async def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
        check_metadata_fields(request.metadata_field)
        authorize(self.auth, context, request.model_spec.name)
        servable, meta_graph = self.service.metadata(model_spec_from_proto(request.model_spec))
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in meta_graph.signature_def.items():
            signature_defs.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        # GetModelMetadata reports name and version only (no signature_name).
        fill_model_spec(response.model_spec, servable.model, servable.version, None)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
        return response


def decode_inputs(
    request: predict_pb2.PredictRequest, budget: TensorBudget | None = None
) -> dict[str, np.ndarray]:
    # With the alias, a malformed tensor reports TF Serving's "tensor parsing error: <alias>".
    return {
        alias: codec_proto.tensor_proto_to_ndarray(tensor, alias=alias, budget=budget)
        for alias, tensor in request.inputs.items()
    }


def check_metadata_fields(fields: Any) -> None:
    """get_model_metadata_impl.cc: at least one field, and only signature_def."""
    if not fields:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            "GetModelMetadataRequest must specify at least one metadata_field",
        )
    for field in fields:
        if field != SIGNATURE_DEF_FIELD:
            raise ServingError(Code.INVALID_ARGUMENT, f"Metadata field {field} is not supported")


# --- ModelService ---

ReloadConfig = Callable[[list[ModelConfig]], Awaitable[None]]


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: version status and config reload. Event-loop only."""

    def __init__(
        self,
        service: ServingService,
        reload_model_config: ReloadConfig,
        auth: InferenceAuth | None = None,
        counter_total: Callable[[str], int] = lambda _name: 0,
        admin_tokens: AdminTokens | None = None,
    ) -> None:
        self.service = service
        self.reload_model_config = reload_model_config
        self.auth = auth or InferenceAuth.disabled()
        self.admin_tokens = admin_tokens or AdminTokens([])
        self.counter_total = counter_total  # Metrics.counter_total, for metric_names

    @translated
    async def GetModelStatus(
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        authorize(self.auth, context, spec.name)
        # As in get_model_status_impl.cc: no empty-name check, and a label is not resolved
        # (it lists every version).
        version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
        # newest first, as ServableStateMonitor's VersionMap (std::greater) lists them
        return codec_status.status_response(self.service.model_status(spec.name, version))

    @translated
    async def HandleReloadConfigRequest(
        self,
        request: model_management_pb2.ReloadConfigRequest,
        context: grpc.aio.ServicerContext,
    ) -> model_management_pb2.ReloadConfigResponse:
        # TF Serving has no auth, so an open tfgate takes reloads from anyone, as it does.
        # Once inference keys or admin tokens are configured, replacing the model list is
        # an admin action: it needs an admin token, as POST /v1/admin/reload-config does.
        if self.auth.enabled or self.admin_tokens.configured:
            self.admin_tokens.check(call_metadata(context).get("authorization"))
        if request.config.WhichOneof("config") != "model_config_list":
            raise ServingError(
                Code.INVALID_ARGUMENT,
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported",
            )
        # The same parser and validation as --model_config_file, fed the request's config.
        try:
            configs = model_config.parse_model_server_config(
                text_format.MessageToString(request.config)
            )
        except model_config.ConfigError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None
        for config in configs:
            log.info(
                "Reload config entry: name %s base_path %s platform %s",
                config.name,
                config.base_path,
                config.platform,
            )
        # model_service_impl.cc: each requested counter's increase over the reload (0 for a
        # name that is not a counter here), reported once per name.
        names = list(dict.fromkeys(request.metric_names))
        before = {name: self.counter_total(name) for name in names}
        # ServerCore.reload_model_config applies reloads one at a time (gRPC, config file poll,
        # admin), then waits, as TF Serving does, for the models this config adds.
        try:
            await self.reload_model_config(configs)
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            raise
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = int(Code.OK)
        for name in names:
            metric = response.metric.add(name=name)
            metric.int64_value_increase = self.counter_total(name) - before[name]
        return response
