"""Model status and metadata as TF Serving's REST API prints them (protobuf JSON).

Part of the codec family (only codec*.py know wire formats): rest/api.py calls these to turn
registry records and SignatureDefs into the exact text TF Serving writes, i.e. C++
protobuf's MessageToJsonString with add_whitespace (one-space indent, trailing newline)
and always_print_primitive_fields; the C++ printer lists ordinary fields by field number,
then the set members of oneofs. Metadata is the concatenation http_rest_api_handler.cc
builds by hand: `{\n"model_spec":<json>,\n"metadata": {"signature_def": <json>}\n}\n`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from app.core.errors import Code, ServingError
from app.core.protos import get_model_metadata_pb2, get_model_status_pb2, meta_graph_pb2, model_pb2
from app.core.types import ServableId, VersionState


class VersionStatus(Protocol):
    """The part of a version's record (lifecycle.registry.VersionRecord) a status reply
    shows: the codec sits below lifecycle/ and names what it reads instead of importing it."""

    version: int
    state: VersionState
    error: ServingError | None


def _cpp_field_order(descriptor: Descriptor, value: dict[str, Any], names: bool) -> dict[str, Any]:
    plain = sorted(
        (f for f in descriptor.fields if f.containing_oneof is None), key=lambda f: f.number
    )
    oneof = [f for f in descriptor.fields if f.containing_oneof is not None]
    ordered: dict[str, Any] = {}
    for field in [*plain, *oneof]:
        key = field.name if names else field.json_name
        if key in value:
            ordered[key] = _order_value(field, value[key], names)
    return ordered


def _order_value(field: FieldDescriptor, value: Any, names: bool) -> Any:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    message_type = field.message_type
    if message_type.GetOptions().map_entry:
        value_field = message_type.fields_by_name["value"]
        return {k: _order_value(value_field, v, names) for k, v in value.items()}
    if message_type.full_name.startswith("google.protobuf."):
        return value  # well-known types print as scalars
    if isinstance(value, list):
        return [_cpp_field_order(message_type, v, names) for v in value]
    return _cpp_field_order(message_type, value, names)


def message_to_json(message: Message, *, preserve_names: bool) -> str:
    as_dict = json_format.MessageToDict(
        message,
        preserving_proto_field_name=preserve_names,
        always_print_fields_with_no_presence=True,
    )
    ordered = _cpp_field_order(message.DESCRIPTOR, as_dict, preserve_names)
    return json.dumps(ordered, indent=1, ensure_ascii=False) + "\n"


def status_response(
    records: Sequence[VersionStatus],
) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for record in records:
        entry = response.model_version_status.add()
        entry.version = record.version
        entry.state = int(record.state)
        if record.error is not None:
            entry.status.error_code = int(record.error.code)
            entry.status.error_message = record.error.message
        else:
            entry.status.error_code = int(Code.OK)
    return response


def encode_status_json(records: Sequence[VersionStatus]) -> bytes:
    return message_to_json(status_response(records), preserve_names=False).encode()


def encode_metadata_json(servable: ServableId, meta_graph: meta_graph_pb2.MetaGraphDef) -> bytes:
    spec = model_pb2.ModelSpec(name=servable.model)
    spec.version.value = servable.version
    sig_json = message_to_json(_signature_def_map(meta_graph), preserve_names=True)
    spec_json = message_to_json(spec, preserve_names=True)
    text = f'{{\n"model_spec":{spec_json},\n"metadata": {{"signature_def": {sig_json}}}\n}}\n'
    return text.encode()


def _signature_def_map(meta_graph: meta_graph_pb2.MetaGraphDef) -> Message:
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key in sorted(meta_graph.signature_def):
        sig_map.signature_def[key].CopyFrom(meta_graph.signature_def[key])
    return sig_map
