"""Loads one SavedModel version and runs its signatures: the only TensorFlow code on the hot path.

Data path: workers.loop -> SavedModelRunner.run(signature, inputs, output_aliases) -> outputs
into shared memory. Tensors are fed the way TF Serving's C++ session feeds them (its
predict_util.cc RunPredict: Session::Run on the SignatureDef's tensor names): never reshaped
to the declared shape, dtype enforced by TensorFlow itself.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2

# TF canonical status codes (tensorflow/core/protobuf/error_codes.proto). The worker never
# imports app/, so the few it raises are spelled out here.
INVALID_ARGUMENT = 3
NOT_FOUND = 5
FAILED_PRECONDITION = 9
UNIMPLEMENTED = 12
INTERNAL = 13
DATA_LOSS = 15

# The files tf.compat.v1.saved_model.loader reads, in the order it tries them.
_SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")


class RunnerError(Exception):
    """A load or run failure, with the TF canonical status code the gateway reports."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message

    def __reduce__(self) -> tuple[type[RunnerError], tuple[int, str]]:
        # Default exception pickling would call RunnerError(message) and lose the code.
        return (RunnerError, (self.code, self.message))

    def __repr__(self) -> str:
        return f"RunnerError(code={self.code}, message={self.message!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class _CallPlan:
    """One cached Session callable: which request tensors feed it, what it returns."""

    fn: Callable[..., list[Any]]  # BaseSession._Callable: fed arrays, then default_values
    default_values: tuple[np.ndarray, ...]  # SignatureDef defaults for omitted inputs
    output_aliases: tuple[str, ...]


class SavedModelRunner:
    """One loaded SavedModel version: its own tf.Graph and tf.compat.v1.Session.

    Loading goes through tf.compat.v1.saved_model.loader.load, so TF1 graph exports and TF2
    (tf.saved_model.save) exports load as TF Serving's SavedModelBundle loads them: variables
    restored, assets fed, init ops (legacy_init_op, main_op, __saved_model_init_op) run.

    Thread safety: run() may be called from several threads (Session callables are
    thread-safe; the callable cache is guarded by a lock). close() must not race with run().
    """

    def __init__(
        self,
        export_dir: str,
        tags: Sequence[str] = ("serve",),
        *,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        session_config: config_pb2.ConfigProto | None = None,
    ) -> None:
        """Loads the MetaGraph tagged exactly `tags` from `export_dir` (a version directory).

        `session_config` (the gateway's SessionBundleConfig: --tensorflow_session_config_file,
        the parallelism and GPU memory flags, or --platform_config_file) is the base
        ConfigProto; non-zero thread counts override its parallelism fields (0 = TF's choice).
        Raises RunnerError with TF's status code and a message naming `export_dir`.
        """
        self.export_dir = str(export_dir)
        self.tags: tuple[str, ...] = tuple(tags)
        config = _session_config(session_config, intra_op_threads, inter_op_threads)
        self.session_config = config  # what the session was created with
        self._lock = threading.Lock()
        self._plans: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _CallPlan] = {}
        self._graph: tf.Graph | None = tf.Graph()
        self._session: tf.compat.v1.Session | None = tf.compat.v1.Session(
            graph=self._graph, config=config
        )
        try:
            meta_graph = _load(self._session, self.tags, self.export_dir)
        except BaseException:
            self.close()
            raise
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)

    def signature_defs_bytes(self) -> bytes:
        """A serialized tensorflow.MetaGraphDef holding only the signature_def map."""
        meta_graph = meta_graph_pb2.MetaGraphDef()
        for key, signature in self.signature_defs.items():
            meta_graph.signature_def[key].CopyFrom(signature)
        return meta_graph.SerializeToString(deterministic=True)

    def run(
        self,
        signature_key: str,
        inputs: Mapping[str, np.ndarray],
        output_aliases: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Runs one signature: feeds `inputs` by alias, returns the requested outputs by alias.

        Empty `output_aliases` fetches every output of the signature (TF Serving's rule for
        an empty output_filter). Inputs with a SignatureDef default may be omitted. DT_STRING
        tensors are numpy object arrays of bytes, both ways.

        The returned arrays may share memory with the input arrays (an Identity output is
        the fed buffer itself): copy them out before the input memory is reused.
        Raises RunnerError: TF's own code and text for errors TF reports (e.g. type
        mismatch -> INVALID_ARGUMENT), TF Serving's text for unknown signatures or aliases.
        """
        key = (signature_key, tuple(inputs), tuple(output_aliases))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make_plan(*key)
        try:
            values = plan.fn(*inputs.values(), *plan.default_values)
        except tf.errors.OpError as e:
            raise RunnerError(e.error_code, e.message) from None
        return {
            alias: _as_array(value)
            for alias, value in zip(plan.output_aliases, values, strict=True)
        }

    def close(self) -> None:
        """Releases the callables, the session and the graph. Idempotent."""
        with self._lock:
            # Callables hold handles into the session: release them before closing it.
            self._plans.clear()
            if self._session is not None:
                self._session.close()
            self._session = None
            self._graph = None

    def __enter__(self) -> SavedModelRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _make_plan(
        self, signature_key: str, fed: tuple[str, ...], requested: tuple[str, ...]
    ) -> _CallPlan:
        """Validates one (signature, fed aliases, fetched aliases) combination and caches it."""
        with self._lock:
            plan = self._plans.get((signature_key, fed, requested))
            if plan is not None:
                return plan
            if self._session is None:
                raise RunnerError(
                    FAILED_PRECONDITION, f"SavedModel at {self.export_dir} has been unloaded"
                )
            signature = self.signature_defs.get(signature_key)
            if signature is None:
                raise RunnerError(
                    FAILED_PRECONDITION, f'Serving signature key "{signature_key}" not found.'
                )
            defaulted = plan_feeds(signature, fed)
            output_aliases = plan_fetches(signature, requested)
            feed_names = [_tensor_name(signature, "inputs", a) for a in (*fed, *defaulted)]
            fetch_names = [_tensor_name(signature, "outputs", a) for a in output_aliases]
            options = config_pb2.CallableOptions(feed=feed_names, fetch=fetch_names)
            try:
                fn = self._session._make_callable_from_options(options)
            except tf.errors.OpError as e:
                raise RunnerError(e.error_code, e.message) from None
            plan = _CallPlan(fn, _default_values(signature, defaulted), output_aliases)
            self._plans[(signature_key, fed, requested)] = plan
            return plan


def plan_feeds(signature: meta_graph_pb2.SignatureDef, fed: Sequence[str]) -> tuple[str, ...]:
    """Checks the fed aliases against the signature; returns the omitted aliases to default.

    Same checks and texts as TF Serving's VerifyRequestInputsSize and
    saved_model::GetInputValues (predict_util.cc, cc/saved_model/util.cc).
    """
    fed_set = set(fed)
    declared = sorted(signature.inputs)
    with_defaults = sorted(signature.defaults)
    if len(fed_set) > len(declared) or (len(fed_set) < len(declared) and not with_defaults):
        raise RunnerError(
            INVALID_ARGUMENT,
            f"input size does not match signature: {len(fed_set)}!={len(declared)} "
            f"len({{{_join(fed_set)}}}) != len({{{_join(declared)}}}). "
            f"Sent extra: {{{_join(fed_set - set(declared))}}}. "
            f"Missing but required: {{{_join(set(declared) - fed_set)}}}.",
        )
    omitted = [alias for alias in declared if alias not in fed_set]
    for alias in omitted:
        if alias not in signature.defaults:
            raise RunnerError(
                INVALID_ARGUMENT,
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) "
                "not found in request and no default value provided. Inputs expected to be "
                f"in the request {{{_join(fed_set)}}}, or default input alias set: "
                f"{_join(with_defaults)}",
            )
    unknown = fed_set - set(declared)
    if unknown:
        used = fed_set & set(declared)
        raise RunnerError(
            INVALID_ARGUMENT,
            f"Inputs contains invalid name. Used request inputs: {_join(used)}, "
            f"request input: {_join(fed_set)}",
        )
    return tuple(omitted)


def plan_fetches(
    signature: meta_graph_pb2.SignatureDef, requested: Sequence[str]
) -> tuple[str, ...]:
    """The output aliases to fetch: `requested` checked as TF Serving checks an output_filter."""
    if not requested:
        return tuple(sorted(signature.outputs))
    seen: set[str] = set()
    for alias in requested:
        if alias not in signature.outputs:
            raise RunnerError(
                INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{_join(signature.outputs)}}}.",
            )
        if alias in seen:
            raise RunnerError(INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return tuple(requested)


def _default_values(
    signature: meta_graph_pb2.SignatureDef, aliases: Sequence[str]
) -> tuple[np.ndarray, ...]:
    """The signature's default TensorProtos, decoded: TF Serving feeds them for omitted inputs."""
    values = []
    for alias in aliases:
        try:
            values.append(tf.make_ndarray(signature.defaults[alias]))
        except (TypeError, ValueError):
            raise RunnerError(INVALID_ARGUMENT, f"tensor parsing error: {alias}") from None
    return tuple(values)


def _join(names: object) -> str:
    """absl::StrJoin(std::set<string>, ","): sorted, comma-separated."""
    return ",".join(sorted(names))  # type: ignore[call-overload]


def _tensor_name(signature: meta_graph_pb2.SignatureDef, side: str, alias: str) -> str:
    """The graph tensor an alias names; TF Serving feeds and fetches dense tensors by name."""
    info = getattr(signature, side)[alias]
    encoding = info.WhichOneof("encoding")
    if encoding != "name":
        raise RunnerError(
            UNIMPLEMENTED,
            f"signature {side[:-1]} '{alias}' is encoded as {encoding}; only dense tensors "
            "named by TensorInfo.name can be fed or fetched",
        )
    return info.name


def _as_array(value: object) -> np.ndarray:
    """Scalar outputs come back as numpy scalars (np.asarray is free for arrays), a scalar
    DT_STRING as plain bytes: that one becomes a 0-d object array like every other string
    tensor, not a fixed-width `S` array the codecs and the IPC do not take."""
    if isinstance(value, bytes):
        array = np.empty((), dtype=object)
        array[()] = value
        return array
    return np.asarray(value)


def _session_config(
    base: config_pb2.ConfigProto | None, intra_op_threads: int, inter_op_threads: int
) -> config_pb2.ConfigProto:
    config = config_pb2.ConfigProto()
    if base is not None:
        config.CopyFrom(base)
    else:
        # Exports pinned to /gpu:0 must still load on a CPU-only worker.
        config.allow_soft_placement = True
    if intra_op_threads:
        config.intra_op_parallelism_threads = intra_op_threads
    if inter_op_threads:
        config.inter_op_parallelism_threads = inter_op_threads
    return config


def _not_found_text(export_dir: str) -> str:
    # The C++ loader's text (reader.cc ReadSavedModel), which TF Serving logs for a bad model.
    return (
        "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
        f"{export_dir}. Check that the directory exists and that you have the right "
        "permissions for accessing it."
    )


def _tags_not_found_text(tags: Sequence[str]) -> str:
    # The C++ loader's text (reader.cc FindMetaGraphDef), rather than the Python loader's.
    return (
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. "
        "To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
        "`saved_model_cli`"
    )


def _load(
    session: tf.compat.v1.Session, tags: tuple[str, ...], export_dir: str
) -> meta_graph_pb2.MetaGraphDef:
    """Runs the TF1 loader into `session`, turning its exceptions into RunnerErrors."""
    if not any(tf.io.gfile.exists(f"{export_dir}/{name}") for name in _SAVED_MODEL_FILENAMES):
        raise RunnerError(NOT_FOUND, _not_found_text(export_dir))
    try:
        with session.graph.as_default():
            return tf.compat.v1.saved_model.loader.load(session, list(tags), export_dir)
    except Exception as e:
        code, text = _classify_load_error(e, tags, export_dir)
    if export_dir not in text:
        text = f"{text} (SavedModel at {export_dir})"
    raise RunnerError(code, text)


def _classify_load_error(error: Exception, tags: Sequence[str], export_dir: str) -> tuple[int, str]:
    """The status TF Serving's C++ loader reports for the failure the Python loader raised."""
    text = str(error)
    if isinstance(error, tf.errors.OpError):  # restore or init op failed inside the session
        return error.error_code, error.message
    if isinstance(error, RuntimeError) and "could not be found in SavedModel" in text:
        return NOT_FOUND, _tags_not_found_text(tags)
    if isinstance(error, OSError) and "Cannot parse file" in text:
        # The loader prefers saved_model.pb when both exist; C++ ReadBinaryProto's text.
        if tf.io.gfile.exists(f"{export_dir}/saved_model.pb"):
            return DATA_LOSS, f"Can't parse {export_dir}/saved_model.pb as binary proto"
        return DATA_LOSS, f"Can't parse {export_dir}/saved_model.pbtxt as text proto"
    if isinstance(error, ValueError) and "not a valid checkpoint" in text:
        # Saver.restore's check; the C++ RestoreV2 reports the missing files as NOT_FOUND.
        return NOT_FOUND, text
    # Anything else is a malformed graph or a loader bug: ValueError, KeyError, TypeError.
    return INTERNAL, f"{type(error).__name__}: {text}"


def read_saved_model(export_dir: str) -> saved_model_pb2.SavedModel:
    """Parses export_dir's saved_model.pb (or .pbtxt) without loading it into a session.

    For tools (workers.inspect); raises RunnerError NOT_FOUND / DATA_LOSS with TF's texts.
    """
    saved_model = saved_model_pb2.SavedModel()
    for name in _SAVED_MODEL_FILENAMES:
        path = f"{export_dir}/{name}"
        if not tf.io.gfile.exists(path):
            continue
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        try:
            if name.endswith(".pbtxt"):
                text_format.Parse(data.decode("utf-8"), saved_model)
            else:
                saved_model.ParseFromString(data)
        except (message.DecodeError, text_format.ParseError, UnicodeDecodeError):
            kind = "text" if name.endswith(".pbtxt") else "binary"
            raise RunnerError(DATA_LOSS, f"Can't parse {path} as {kind} proto") from None
        return saved_model
    raise RunnerError(NOT_FOUND, _not_found_text(export_dir))
