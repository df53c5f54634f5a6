"""What the gateway knows of a loaded servable: its SignatureDefs.

A worker answers a load with a serialized MetaGraphDef that holds only the signature_def map;
this module turns it into SignatureSpecs (used to validate and encode requests) and keeps
the protos (for GetModelMetadata and the REST metadata endpoint).
"""

from __future__ import annotations

import dataclasses

from app.core.protos import meta_graph_pb2
from app.core.types import SignatureSpec, TensorSpec

# Signature keys TF adds for itself; TF Serving lists them in metadata but they cannot be run.
INIT_OP_SIGNATURE = "__saved_model_init_op"


@dataclasses.dataclass(frozen=True)
class ServableMetadata:
    signatures: dict[str, SignatureSpec]
    meta_graph: meta_graph_pb2.MetaGraphDef  # signature_def map only

    @classmethod
    def from_bytes(cls, data: bytes) -> ServableMetadata:
        meta_graph = meta_graph_pb2.MetaGraphDef.FromString(data)
        signatures = {
            key: _signature_spec(key, sig) for key, sig in meta_graph.signature_def.items()
        }
        return cls(signatures, meta_graph)


def _tensor_spec(alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    shape: tuple[int, ...] | None
    if not info.HasField("tensor_shape") or info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(alias=alias, tensor_name=info.name, dtype=info.dtype, shape=shape)


def _signature_spec(key: str, sig: meta_graph_pb2.SignatureDef) -> SignatureSpec:
    return SignatureSpec(
        key=key,
        method_name=sig.method_name,
        inputs={alias: _tensor_spec(alias, info) for alias, info in sorted(sig.inputs.items())},
        outputs={alias: _tensor_spec(alias, info) for alias, info in sorted(sig.outputs.items())},
        inputs_with_defaults=frozenset(sig.defaults.keys()),
    )
