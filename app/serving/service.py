"""The request path in one screen: resolve -> (cache) -> batcher -> worker -> result.

rest/api.py and rpc/server.py decode their transport's payload with the codec, call one of the
methods here, and encode what comes back. Everything in between is numpy and ServableIds.
The signature checks TF Serving performs per API (predict / classify / regress, in
serving/signature_checks.py) run here, so both transports report the same errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import numpy as np

from app.cache.result_cache import ResultCache
from app.core.errors import Code, ServingError
from app.core.protos import meta_graph_pb2
from app.core.signatures import INIT_OP_SIGNATURE, ServableMetadata
from app.core.types import (
    DEFAULT_SIGNATURE,
    ModelSpec,
    ServableId,
    SignatureSpec,
    VersionState,
)
from app.lifecycle.registry import Registry, VersionRecord
from app.serving.batcher import Batcher
from app.serving.observation import (
    NOT_ROUTED,
    ArmRecorder,
    Entrypoint,
    Observer,
    RequestObservation,
    Resolved,
    shadowed,
)
from app.serving.signature_checks import (
    check_classify_outputs,
    check_predict_inputs,
    check_regress_output,
    classify_aliases,
    decoded_examples,
    regress_aliases,
    select_outputs,
    string_tensor,
)
from app.traffic.live_rule import LiveRule
from app.traffic.router import TrafficRouter

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


@dataclasses.dataclass
class PredictResult:
    servable: ServableId
    signature: str
    outputs: dict[str, np.ndarray]


@dataclasses.dataclass
class ClassifyResult:
    servable: ServableId
    signature: str
    classes: np.ndarray | None
    scores: np.ndarray | None


@dataclasses.dataclass
class RegressResult:
    servable: ServableId
    signature: str
    outputs: np.ndarray


RuntimeObserver = Callable[[str, str, float], None]

# The API label TF Serving's runtime_latency carries per call type (predict_util.cc,
# classifier.cc, regressor.cc); MultiInference records none.
PREDICT_API = "Predict"
CLASSIFY_API = "Classify"
REGRESS_API = "Regress"
# The request metrics' API label of V2 (Open Inference Protocol) infer calls, REST and gRPC.
V2_INFER_API = "v2_infer"


class ServingService:
    """Shared by REST and gRPC. Event-loop only."""

    def __init__(
        self,
        registry: Registry,
        batcher: Batcher,
        *,
        enable_signature_method_name_check: bool = False,
        observers: Sequence[Observer] = (),
        cache: ResultCache | None = None,
        traffic: TrafficRouter | None = None,
    ) -> None:
        self.registry = registry
        # Traffic rules (A/B splits, canaries, shadow): consulted for requests that name no
        # version or label; None or a model without a rule: registry.resolve() alone.
        self.traffic = traffic
        self.batcher = batcher
        self.cache = cache  # None: no result cache configured
        self.method_name_check = enable_signature_method_name_check
        # observers(model, api, entrypoint, code, seconds): metrics and access logs
        self.observers = list(observers)
        # runtime_observers(model, api, seconds): per successful model run of one request
        self.runtime_observers: list[RuntimeObserver] = []
        # example_observers(model, examples): per MultiInference request (metrics)
        self.example_observers: list[Callable[[str, int], None]] = []

    # --- predict ---

    async def predict(
        self,
        spec: ModelSpec,
        decode_inputs: Callable[[SignatureSpec], dict[str, np.ndarray]],
        *,
        output_filter: Sequence[str] = (),
        deadline: float | None,
        entrypoint: Entrypoint,
        cache_control: str | None = None,
        api: str = "predict",
        routing_key: str | None = None,
        request_id: str | None = None,
        id_counter: int | None = None,
    ) -> PredictResult:
        """Predict on the resolved servable (a traffic rule's arm when the spec names no
        version or label). `api` labels request metrics: "predict" for TF Serving's API,
        V2_INFER_API for the Open Inference Protocol's infer (same path). `request_id` is
        what a traffic outcome names the request by; `id_counter` its counter when the
        gateway made it up (core/request_ids.py)."""
        with RequestObservation(
            self, spec.name, api, entrypoint, request_id, id_counter
        ) as seen:
            servable, metadata, routed = seen.routed_to(self.resolve_routed(spec, routing_key))
            signature = self._predict_signature(metadata, spec.signature_name, entrypoint)
            inputs = decode_inputs(signature)
            check_predict_inputs(signature, inputs)
            output_aliases = select_outputs(signature, output_filter)
            outputs = await self._run(
                servable,
                signature.key,
                inputs,
                output_aliases,
                deadline,
                cache_control,
                api=PREDICT_API,
            )
            if (shadow := shadowed(routed)) is not None:
                self._offer_shadow(shadow, signature.key, inputs, output_aliases, outputs)
            return PredictResult(servable, signature.key, outputs)

    # --- traffic rules ---

    def resolve_routed(self, spec: ModelSpec, routing_key: str | None) -> Resolved:
        """registry.resolve(), after the model's traffic rule (if any) chose an arm for a
        request that names no version or label (an explicit one always wins). An arm whose
        version is not AVAILABLE (a rule change racing a load) serves as if there were no
        rule, so no request is dropped for it."""
        if self.traffic is not None and spec.version is None and spec.label is None:
            routed = self.traffic.choose(spec.name, routing_key)
            if routed is not None:
                try:
                    servable, metadata = self.registry.resolve(routed[0].specs[routed[1]])
                except ServingError:
                    pass
                else:
                    return servable, metadata, routed
        servable, metadata = self.registry.resolve(spec)
        return servable, metadata, None

    def arm_observed(
        self, routed: tuple[LiveRule, int] | None, request_id: str | None
    ) -> contextlib.AbstractContextManager[None]:
        if routed is None or self.traffic is None:
            return NOT_ROUTED
        return ArmRecorder(self.traffic, routed, request_id)

    def _offer_shadow(
        self,
        live: LiveRule,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_aliases: Sequence[str],
        primary: dict[str, np.ndarray],
    ) -> None:
        """Maybe queue a copy of this request for the rule's shadow version (after the
        answer was produced; dropped when the bounded queue is full)."""
        shadow = live.rule.shadow
        traffic = self.traffic
        if shadow is None or traffic is None or live.shadow_rng.random() >= shadow.fraction:
            return

        async def run_shadow() -> None:
            try:
                servable, _ = self.registry.resolve(ModelSpec(live.model, shadow.version))
                outputs = await self._run(
                    servable, signature, inputs, output_aliases, None, "no-store", api=None
                )
            except ServingError:
                traffic.record_shadow(live, primary, None)
                return
            traffic.record_shadow(live, primary, outputs)

        if traffic.shadow.offer(run_shadow, max_pending=shadow.max_pending):
            live.shadow.sent += 1
        else:
            live.shadow.dropped += 1

    @staticmethod
    def _predict_signature(
        metadata: ServableMetadata, name: str, entrypoint: Entrypoint
    ) -> SignatureSpec:
        key = name or DEFAULT_SIGNATURE
        signature = metadata.signatures.get(key)
        if signature is None or key == INIT_OP_SIGNATURE:
            if entrypoint is Entrypoint.REST:
                raise ServingError(
                    Code.INVALID_ARGUMENT,
                    f'Serving signature name: "{key}" not found in signature def',
                )
            raise ServingError(
                Code.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
            )
        return signature

    async def _run(
        self,
        servable: ServableId,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_aliases: Sequence[str],
        deadline: float | None,
        cache_control: str | None = None,
        *,
        api: str | None,
    ) -> dict[str, np.ndarray]:
        """The model's outputs for `inputs`, through the cache (when configured) and the
        batcher. `api` labels runtime_latency; None records none (MultiInference)."""
        self.registry.acquire(servable)
        try:
            submit = functools.partial(
                self._submit,
                servable,
                signature,
                output_aliases=output_aliases,
                deadline=deadline,
                api=api,
            )
            if self.cache is None:
                return await submit(inputs)
            # cache: rows found in Redis (or being computed for an identical request) are
            # done; only the missing rows go on to batcher -> worker, merged back in row order.
            return await self.cache.run(
                servable,
                signature,
                inputs,
                output_aliases,
                cache_control=cache_control,
                deadline=deadline,
                compute=submit,
                fingerprint=self.registry.fingerprint(servable),
            )
        finally:
            self.registry.release(servable)

    async def _submit(
        self,
        servable: ServableId,
        signature: str,
        inputs: dict[str, np.ndarray],
        *,
        output_aliases: Sequence[str],
        deadline: float | None,
        api: str | None,
    ) -> dict[str, np.ndarray]:
        """One hand-off to the batcher, timed for runtime_latency. TF Serving times its
        Session::Run, which with batching includes the wait for the batch; here the span
        also covers the hop to the worker. Only a run that succeeded is recorded, as there."""
        started = time.perf_counter()
        outputs = await self.batcher.submit(servable, signature, inputs, output_aliases, deadline)
        if api is not None:
            seconds = time.perf_counter() - started
            for observer in self.runtime_observers:
                observer(servable.model, api, seconds)
        return outputs

    # --- classify / regress ---

    async def classify(
        self,
        spec: ModelSpec,
        decode_examples: Callable[[], list[bytes]],
        *,
        deadline: float | None,
        entrypoint: Entrypoint,
        cache_control: str | None = None,
        routing_key: str | None = None,
        request_id: str | None = None,
        id_counter: int | None = None,
    ) -> ClassifyResult:
        with RequestObservation(
            self, spec.name, "classify", entrypoint, request_id, id_counter
        ) as seen:
            servable, metadata, routed = seen.routed_to(self.resolve_routed(spec, routing_key))
            signature = self._example_signature(metadata, spec.signature_name, CLASSIFY_METHOD)
            return await self.run_classify(
                servable,
                signature,
                decode_examples,
                deadline=deadline,
                cache_control=cache_control,
                api=CLASSIFY_API,
                shadow=shadowed(routed),
            )

    async def run_classify(
        self,
        servable: ServableId,
        signature: SignatureSpec,
        decode_examples: Callable[[], list[bytes]],
        *,
        deadline: float | None,
        cache_control: str | None = None,
        api: str | None,
        shadow: LiveRule | None = None,
    ) -> ClassifyResult:
        """Classify on a resolved servable and signature (Classify, MultiInference's tasks);
        `shadow`: the traffic rule whose shadow version may get a copy afterwards."""
        input_alias, classes_alias, scores_alias = classify_aliases(signature)
        # The Input is converted only after the model and signature checks, as in TF Serving.
        examples = decoded_examples(decode_examples)
        inputs = {input_alias: string_tensor(examples)}
        aliases = [a for a in (classes_alias, scores_alias) if a]
        outputs = await self._run(
            servable, signature.key, inputs, aliases, deadline, cache_control, api=api
        )
        if shadow is not None:
            self._offer_shadow(shadow, signature.key, inputs, aliases, outputs)
        classes = outputs.get(classes_alias) if classes_alias else None
        scores = outputs.get(scores_alias) if scores_alias else None
        check_classify_outputs(classes, scores, len(examples))
        return ClassifyResult(servable, signature.key, classes, scores)

    async def regress(
        self,
        spec: ModelSpec,
        decode_examples: Callable[[], list[bytes]],
        *,
        deadline: float | None,
        entrypoint: Entrypoint,
        cache_control: str | None = None,
        routing_key: str | None = None,
        request_id: str | None = None,
        id_counter: int | None = None,
    ) -> RegressResult:
        with RequestObservation(
            self, spec.name, "regress", entrypoint, request_id, id_counter
        ) as seen:
            servable, metadata, routed = seen.routed_to(self.resolve_routed(spec, routing_key))
            signature = self._example_signature(metadata, spec.signature_name, REGRESS_METHOD)
            return await self.run_regress(
                servable,
                signature,
                decode_examples,
                deadline=deadline,
                cache_control=cache_control,
                api=REGRESS_API,
                shadow=shadowed(routed),
            )

    async def run_regress(
        self,
        servable: ServableId,
        signature: SignatureSpec,
        decode_examples: Callable[[], list[bytes]],
        *,
        deadline: float | None,
        cache_control: str | None = None,
        api: str | None,
        shadow: LiveRule | None = None,
    ) -> RegressResult:
        """Regress on a resolved servable and signature (Regress, MultiInference's tasks);
        `shadow`: the traffic rule whose shadow version may get a copy afterwards."""
        input_alias, output_alias = regress_aliases(signature)
        examples = decoded_examples(decode_examples)
        inputs = {input_alias: string_tensor(examples)}
        outputs = await self._run(
            servable, signature.key, inputs, [output_alias], deadline, cache_control, api=api
        )
        if shadow is not None:
            self._offer_shadow(shadow, signature.key, inputs, [output_alias], outputs)
        values = check_regress_output(outputs[output_alias], len(examples))
        return RegressResult(servable, signature.key, values)

    def record_examples(self, model: str, count: int) -> None:
        """request_example_counts: TF Serving records it for MultiInference only (Classify
        and Regress stopped in 2020), once per request, after the model ran."""
        for observer in self.example_observers:
            observer(model, count)

    def _example_signature(
        self, metadata: ServableMetadata, name: str, method: str
    ) -> SignatureSpec:
        key = name or DEFAULT_SIGNATURE
        signature = metadata.signatures.get(key)
        if signature is None:
            raise ServingError(
                Code.INVALID_ARGUMENT, f"No signature was found with the name: {key}"
            )
        self.check_method_name(signature, method)
        return signature

    def check_method_name(self, signature: SignatureSpec, method: str) -> None:
        """--enable_signature_method_name_check: the signature must declare `method`."""
        if self.method_name_check and signature.method_name != method:
            kind = "classification" if method == CLASSIFY_METHOD else "regression"
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Expected {kind} signature method_name to be {method}. "
                f"Was: {signature.method_name}",
            )

    # --- status / metadata ---

    def resolve(self, spec: ModelSpec) -> tuple[ServableId, ServableMetadata]:
        return self.registry.resolve(spec)

    def metadata(self, spec: ModelSpec) -> tuple[ServableId, meta_graph_pb2.MetaGraphDef]:
        servable, metadata = self.registry.resolve(spec)
        return servable, metadata.meta_graph

    def available_versions(self, name: str) -> list[int]:
        """The model's AVAILABLE versions, ascending (V2 model metadata, REST and gRPC)."""
        return [
            r.version
            for r in self.registry.version_records(name)
            if r.state is VersionState.AVAILABLE
        ]

    def model_status(self, name: str, version: int | None) -> list[VersionRecord]:
        """Newest version first, as TF Serving's status lists them (REST and gRPC)."""
        records = self.registry.version_records(name)[::-1]
        if not records:
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        if version is not None:
            records = [r for r in records if r.version == version]
            if not records:
                raise ServingError(
                    Code.NOT_FOUND, f"Could not find version {version} of model {name}"
                )
        return records
