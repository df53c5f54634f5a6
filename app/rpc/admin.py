"""gRPC AdminService (proto/admin.proto): the admin API for gRPC clients.

Edge of the admin path: gRPC -> grpc_admin (auth from `authorization` metadata) -> AdminApi.
Replies carry the same JSON as the REST admin routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson

from app.admin.api import AdminApi
from app.admin.tokens import AdminTokens
from app.core.errors import Code, ServingError
from app.rpc.services import call_metadata
from proto import admin_pb2, admin_pb2_grpc


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, admin: AdminApi, tokens: AdminTokens) -> None:
        self.admin = admin
        self.tokens = tokens

    async def _call(
        self, context: grpc.aio.ServicerContext, action: Callable[[], Awaitable[Any] | Any]
    ) -> admin_pb2.AdminReply:
        try:
            self.tokens.check(call_metadata(context).get("authorization"))
            result = action()
            if isinstance(result, Awaitable):
                result = await result
        except ServingError as exc:
            await context.abort(exc.grpc_status, exc.grpc_message())
        return admin_pb2.AdminReply(json=orjson.dumps(result).decode())

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(context, self.admin.list_models)

    async def DescribeModel(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(context, lambda: self.admin.describe(request.name))

    async def Pin(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(context, lambda: self.admin.pin(request.name, request.version))

    async def Unpin(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(context, lambda: self.admin.unpin(request.name))

    async def LoadVersion(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(
            context, lambda: self.admin.load_version(request.name, request.version)
        )

    async def UnloadVersion(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(
            context, lambda: self.admin.unload_version(request.name, request.version)
        )

    async def ReloadConfig(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(context, self.admin.reload_config)

    async def SyncNow(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(context, lambda: self.admin.sync_now(request.name))

    async def GetTraffic(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(context, lambda: self.admin.get_traffic(request.name))

    async def SetTraffic(self, request, context):  # type: ignore[no-untyped-def]
        def body() -> Any:
            try:
                return orjson.loads(request.rule_json or "null")
            except orjson.JSONDecodeError:
                raise ServingError(
                    Code.INVALID_ARGUMENT, "rule_json must be a JSON document"
                ) from None

        return await self._call(
            context, lambda: self.admin.set_traffic(request.name, body())
        )

    async def DeleteTraffic(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(context, lambda: self.admin.delete_traffic(request.name))

    async def ReportOutcome(self, request, context):  # type: ignore[no-untyped-def]
        body: dict[str, Any] = {}
        subject = request.WhichOneof("subject")
        value = request.WhichOneof("value")
        if subject is not None:
            body[subject] = getattr(request, subject)
        if value is not None:
            body[value] = getattr(request, value)
        return await self._call(context, lambda: self.admin.report_outcome(request.name, body))
