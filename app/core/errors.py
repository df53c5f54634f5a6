"""One error type for the whole request path, and the tables that translate it at the edges.

Only the REST and gRPC edges translate a ServingError; everything else raises it.
Codes are TensorFlow's (== gRPC's) canonical status codes.
"""

from __future__ import annotations

import enum

import grpc


class Code(enum.IntEnum):
    """TensorFlow / gRPC canonical status codes (tensorflow/core/protobuf/error_codes.proto)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# TF Serving's http_server.cc ToHTTPStatusCode; anything not listed maps to 500.
HTTP_STATUS_BY_CODE: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

# TF status code number == gRPC status code number (grpc_status_util.cc).
GRPC_STATUS_BY_CODE: dict[Code, grpc.StatusCode] = {
    Code(status.value[0]): status for status in grpc.StatusCode
}

# TF Serving truncates gRPC status messages (grpc_status_util.cc).
GRPC_MAX_MESSAGE_CHARS = 1024
GRPC_TRUNCATED_SUFFIX = "...TRUNCATED"


class ServingError(Exception):
    """A request failed with a canonical code and TF Serving's message text."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS_BY_CODE.get(self.code, 500)

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return GRPC_STATUS_BY_CODE[self.code]

    def grpc_message(self) -> str:
        if len(self.message) <= GRPC_MAX_MESSAGE_CHARS:
            return self.message
        return self.message[:GRPC_MAX_MESSAGE_CHARS] + GRPC_TRUNCATED_SUFFIX

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


# TF Serving's main() returns -1 when its flags do not parse or Server::BuildAndStart fails
# (bad config files, a failed initial load, a gRPC port it cannot bind); the shell sees 255.
STARTUP_FAILURE_EXIT_STATUS = 255


class StartupError(Exception):
    """The server cannot start; the message is printed and the process exits with
    STARTUP_FAILURE_EXIT_STATUS."""
