"""gRPC front of the Open Inference Protocol (V2): inference.GRPCInferenceService's ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer, on the same server (and
port) as TF Serving's PredictionService.

Data path position: gRPC request -> (here) ModelSpec + codec/v2_proto.py decode ->
serving/service.py predict (resolve -> cache -> batcher -> worker) -> codec/v2_proto.py encode
(raw_output_contents). Errors are gRPC statuses with the code of their ServingError. The
protocol types are tfgate's own compile of the protocol's .proto (proto/open_inference.proto).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from app import __version__
from app.codec import v2_json, v2_proto, v2_response
from app.codec.tensor import request_budget
from app.core.errors import Code, ServingError
from app.core.types import ModelSpec
from app.rpc.services import (
    authorize,
    cache_control,
    loop_deadline,
    routing_metadata,
    translated,
)
from app.serving.auth import InferenceAuth
from app.serving.observation import MAX_ROUTING_KEY_CHARS
from app.serving.service import V2_INFER_API, Entrypoint, PredictResult, ServingService
from proto import open_inference_pb2 as pb
from proto import open_inference_pb2_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
class V2InferenceServicer(open_inference_pb2_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on top of ServingService. Event-loop only."""

    def __init__(
        self,
        service: ServingService,
        *,
        server_ready: Callable[[], bool],
        auth: InferenceAuth | None = None,
        max_tensor_bytes: int = 0,
    ) -> None:
        self.service = service
        self.server_ready = server_ready
        self.auth = auth or InferenceAuth.disabled()
        self.max_tensor_bytes = max_tensor_bytes


    @translated
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @translated
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.server_ready())

    @translated
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name="tfgate", version=__version__, extensions=list(v2_json.EXTENSIONS)
        )

    @translated
    async def ModelReady(self, request, context):
        """ready=false for a model that is unknown or has no servable version now."""
        authorize(self.auth, context, request.name)
        spec = v2_json.v2_model_spec(request.name, request.version)
        try:
            self.service.resolve(spec)
        except ServingError as exc:
            if exc.code is Code.NOT_FOUND:
                return pb.ModelReadyResponse(ready=False)
            raise
        return pb.ModelReadyResponse(ready=True)

    @translated
    async def ModelMetadata(self, request, context):
        authorize(self.auth, context, request.name)
        _, metadata = self.service.resolve(v2_json.v2_model_spec(request.name, request.version))
        versions = self.service.available_versions(request.name)
        described = v2_response.model_metadata(request.name, versions, metadata.signatures)
        response = pb.ModelMetadataResponse(
            name=described["name"],
            versions=described["versions"],
            platform=described["platform"],
        )
        for kind in ("inputs", "outputs"):
            for tensor in described[kind]:
                getattr(response, kind).add(**tensor)
        return response

    @translated
    async def ModelInfer(self, request, context):
        authorize(self.auth, context, request.model_name)
        spec = v2_json.v2_model_spec(
            request.model_name, request.model_version, v2_proto.signature_name(request)
        )
        result = await self._predict(request, spec, context)
        outputs = v2_response.ordered_outputs(result.outputs, [o.name for o in request.outputs])
        return v2_proto.encode_infer_response(
            request.model_name, result.servable.version, request.id, outputs
        )

    async def _predict(
        self,
        request: pb.ModelInferRequest,
        spec: ModelSpec,
        context: grpc.aio.ServicerContext,
    ) -> PredictResult:
        """The one call into the service for V2 gRPC infer: what a call carries to the
        service's resolve step (x-tfgate-routing-key metadata for traffic rules) goes here.
        An outcome names the request by its `id` when set, else x-request-id."""
        budget = request_budget(self.max_tensor_bytes)
        routing = routing_metadata(context)
        if request.id and len(request.id) <= MAX_ROUTING_KEY_CHARS:
            routing["request_id"] = request.id
        return await self.service.predict(
            spec,
            lambda signature: v2_proto.decode_infer_inputs(request, signature, budget),
            output_filter=[o.name for o in request.outputs],
            deadline=loop_deadline(context),
            entrypoint=Entrypoint.GRPC,
            cache_control=cache_control(context),
            api=V2_INFER_API,
            **routing,
        )
