"""app/codec/json_dense.py: the simdjson lane gives the orjson path's tensors, or stands aside.

Every case is decoded twice, with the dense lane and with it switched off, and the two outcomes
(dtype, shape, bits, or the error) must be identical; the lane must also actually be taken for
the well-formed bodies, so a lane that always stood aside would fail here too.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.codec import json_dense as codec_json_dense
from app.codec import tensor_json as codec
from app.core.errors import ServingError
from app.core.types import DT_DOUBLE, DT_FLOAT, DT_INT32, DT_INT64, SignatureSpec, TensorSpec


def signature(defaults: frozenset[str] = frozenset(), **dtypes: int) -> SignatureSpec:
    inputs = {name: TensorSpec(name, f"{name}:0", dtype, None) for name, dtype in dtypes.items()}
    return SignatureSpec("serving_default", "tensorflow/serving/predict", inputs, {}, defaults)


FLOAT_X = signature(x=DT_FLOAT)

# Spellings whose JSON form matters: ints vs floats at the dtypes' exact limits, signed zeros,
# exponents, values beyond float32 and beyond int64/uint64/double.
NUMBER_TEXTS = [
    "0", "-0", "0.0", "-0.0", "-0e0", "1", "-1", "2.5", "-0.125", "1e5", "1E-3", "2.5e+3",
    "0.1", "3.4028234663852886e38", "3.5e38", "1e300", "1e-320", "16777215", "16777216",
    "-16777217", "16777216.0", "9007199254740991", "9007199254740993", "9223372036854775808",
    "18446744073709551615", "18446744073709551616", "1e400",
]  # fmt: skip
OTHER_TEXTS = ["true", "false", "null", '"s"', '{"b64": "AA=="}', "NaN", "[]"]


def _outcome(body: bytes, sig: SignatureSpec) -> object:
    try:
        tensors = codec.decode_predict_inputs(codec.parse_predict_json(body), sig)
    except ServingError as error:
        return (error.code, error.message)
    return {k: (v.dtype, v.shape, v.tobytes()) for k, v in tensors.items()}


def _both_ways(body: bytes, sig: SignatureSpec, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """(outcome with the dense lane, outcome without it, whether the lane produced the tensors)."""
    monkeypatch.setattr(codec_json_dense, "DENSE_MIN_WEIGHT", 0)
    used = False
    try:
        parsed = codec.parse_predict_json(body)
        codec.decode_predict_inputs(parsed, sig)
        used = parsed.dense is not None and parsed._doc is None  # orjson was never needed
    except ServingError:
        pass
    dense = _outcome(body, sig)
    monkeypatch.setattr(codec, "read_dense_body", lambda body: None)
    plain = _outcome(body, sig)
    monkeypatch.undo()
    return dense, plain, used


def _random_text(rng: np.random.Generator, shape: tuple[int, ...], odd: float) -> str:
    if not shape:
        pool = OTHER_TEXTS if rng.random() < odd else NUMBER_TEXTS
        return str(pool[rng.integers(len(pool))]) if rng.random() < 0.2 else repr(rng.normal())
    size = shape[0]
    if rng.random() < odd:  # ragged: one element one longer or shorter, or of another rank
        size = max(0, size + int(rng.choice([-1, 1])))
    inner = [_random_text(rng, shape[1:], odd) for _ in range(size)]
    if inner and rng.random() < odd / 2:
        inner[-1] = _random_text(rng, shape[2:] if len(shape) > 1 else (1,), odd)
    space = " " if rng.random() < 0.5 else ""
    return "[" + ("," + space).join(inner) + "]"


@pytest.mark.parametrize("dtype", [DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64])
def test_dense_lane_matches_the_orjson_path(dtype: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(dtype)
    sig_one, sig_two = signature(x=dtype), signature(x=dtype, y=DT_FLOAT)
    used = total = 0
    for _ in range(300):
        shape = tuple(int(n) for n in rng.integers(1, 4, size=int(rng.integers(1, 4))))
        odd = 0.0 if rng.random() < 0.5 else 0.05
        x, y = _random_text(rng, shape, odd), _random_text(rng, shape, odd)
        for body, sig in [
            (f'{{"instances": {x}}}', sig_one),
            (f'{{"inputs": {x}, "signature_name": "serving_default"}}', sig_one),
            (f'{{"inputs": {{"y": {y}, "x": {x}}}}}', sig_two),
            (f'{{"inputs": {{"x": {x}}}}}', sig_two),  # y missing: the plain path's error
            (f'{{"instances": {x}}}', sig_two),  # a plain list for two inputs: its error
        ]:
            dense, plain, lane = _both_ways(body.encode(), sig, monkeypatch)
            assert repr(dense) == repr(plain), body
            used, total = used + lane, total + 1
    print(f"dense lane took {used} of {total} bodies")
    if dtype in (DT_FLOAT, DT_DOUBLE):
        assert used > total // 4  # the well-formed float bodies did go through the lane
    else:
        assert used == 0  # integer dtypes always need the JSON spelling


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2], [3, 4, 5], [6]]}',  # ragged, yet the size of a 3x2
        b'{"instances": [[1, 2], 3, [4]]}',
        b'{"instances": [[[1], [2]], [[3], [4]]], "signature_name": "a[b"}',
        b'{"instances": [1, 2], "instances": [3, 4]}',
        b'{"instances": [1, 2], "inputs": [3, 4]}',
        b'{"instances": [1, 2], "other": 1}',
        b'{"instances": [1, 2], "signature_name": "\\u0073erving_default"}',
        b'{"instances": [1, NaN]}',
        b'{"instances": [1, 2]} trailing',
        b'{"instances": [[], []]}',
        b'{"inputs": 1.5}',
        b'{"inputs": {"x": [1, 2], "x": [3, 4]}}',
        b'{"signature_name": 7, "instances": [1, 2]}',
        b"[1, 2]",
    ],
)
def test_dense_lane_stands_aside(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    dense, plain, lane = _both_ways(body, FLOAT_X, monkeypatch)
    assert not lane
    assert repr(dense) == repr(plain)


def test_byte_order_mark_is_skipped_as_rapidjson_does(monkeypatch: pytest.MonkeyPatch) -> None:
    dense, plain, lane = _both_ways(b'\xef\xbb\xbf{"instances": [1, 2]}', FLOAT_X, monkeypatch)
    assert lane and dense == plain
    dense, plain, lane = _both_ways(b'\xef\xbb{"instances": [1, 2]}', FLOAT_X, monkeypatch)
    assert not lane and dense == plain


def test_ragged_body_of_a_regular_size_gets_tf_servings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec_json_dense, "DENSE_MIN_WEIGHT", 0)
    body = b'{"instances": [[1, 2], [3, 4, 5], [6]]}'
    with pytest.raises(ServingError) as info:
        codec.decode_predict_inputs(codec.parse_predict_json(body), FLOAT_X)
    assert info.value.message == (
        "Failed to process element: 1 of 'instances' list. Error:"
        " INVALID_ARGUMENT: Expecting tensor size: 2 but got: 3"
    )


def test_image_body_takes_the_lane_at_the_default_threshold() -> None:
    image = np.random.default_rng(0).random((2, 28, 28, 1))
    body = orjson.dumps({"instances": image.tolist()})
    parsed = codec.parse_predict_json(body)
    tensors = codec.decode_predict_inputs(parsed, FLOAT_X)
    assert parsed.dense is not None and parsed._doc is None
    assert tensors["x"].dtype == np.float32 and tensors["x"].shape == (2, 28, 28, 1)
    assert np.array_equal(tensors["x"], image.astype(np.float32))


@pytest.mark.parametrize(
    ("shape", "number", "lane"),
    [
        # the structure decides, however short the numbers are printed
        ((1, 28, 28, 1), "{:.4f}", True),  # ~7 KB, under the old 8 KiB byte threshold
        ((1, 28, 28, 1), "{:.0f}", True),  # ~3 KB of one-digit ints
        ((1, 8, 8, 1), "{:.4f}", True),  # 64 numbers but 74 lists
        ((1, 256), "{:.4f}", True),
        ((1, 256), "{!r}", True),
        ((1, 64), "{!r}", False),  # ~1.2 KB flat: orjson + np.array is faster
        ((1, 4), "{:.4f}", False),
        ((2, 2), "{!r}", False),
    ],
)
def test_lane_is_chosen_by_element_count_and_nesting(
    shape: tuple[int, ...], number: str, lane: bool
) -> None:
    def text(array: np.ndarray) -> str:
        if array.ndim == 1:
            return "[" + ",".join(number.format(float(v)) for v in array) + "]"
        return "[" + ",".join(text(sub) for sub in array) + "]"

    values = np.random.default_rng(1).random(shape).astype(np.float32)
    body = ('{"instances": ' + text(values) + "}").encode()
    parsed = codec.parse_predict_json(body)
    tensors = codec.decode_predict_inputs(parsed, FLOAT_X)
    assert (parsed.dense is not None) is lane
    assert tensors["x"].shape == shape


def test_structure_guess_reads_a_bounded_prefix() -> None:
    """A long body whose first DENSE_SCAN_BYTES hold few separators (a long string first) is not
    scanned further, and the orjson path still decodes it."""
    pad = "a" * codec_json_dense.DENSE_SCAN_BYTES
    body = ('{"signature_name": "' + pad + '", "instances": ' + str([0.5] * 500) + "}").encode()
    assert not codec_json_dense.worth_dense(body)
    assert codec_json_dense.worth_dense(body[len(pad) :])


def test_signed_zeros_keep_their_json_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    body = b'{"instances": [-0, -0.0, -0e0, 0]}'
    dense, plain, lane = _both_ways(body, FLOAT_X, monkeypatch)
    assert lane and dense == plain
    assert np.signbit(np.frombuffer(dense["x"][2], np.float32)).tolist() == [
        False, True, True, False,
    ]  # fmt: skip


def test_parser_is_reusable_after_any_outcome() -> None:
    for body in [b'{"instances": [1, 2]}', b"{bad", b'{"instances": [1, true]}', b"[1]"] * 3:
        codec_json_dense.read_dense_body(body)
    assert codec_json_dense.read_dense_body(b'{"instances": [1.5]}') is not None


def test_large_body_gets_a_parser_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_json_dense, "_REUSE_MAX_BYTES", 16)
    reused = codec_json_dense._parser_for(8)
    assert codec_json_dense._parser_for(8) is reused
    assert codec_json_dense._parser_for(17) is not reused
    dense = codec_json_dense.read_dense_body(b'{"inputs": {"x": [[1.5, 2.5]], "y": [3]}}')
    assert dense is not None
    assert [(k, f.tolist(), s) for k, (f, s) in dense.tensors.items()] == [
        ("x", [1.5, 2.5], (1, 2)), ("y", [3.0], (1,)),
    ]  # fmt: skip


# Ragged tensors as_buffer() flattens to a regular size: one list's length off, a list where a
# number should be (a "[" the walk does not account for), a number where a list should be.
_RAGGED_OF_A_REGULAR_SIZE = [
    b'{"instances": [[1, 2], [3, 4, 5], [6]]}',
    b'{"instances": [[1, 2], [3, [4]]]}',
    b'{"instances": [[1, [2]], [3, 4]]}',
    b'{"instances": [[1, 2], [[3], 4]]}',
    b'{"instances": [[[1, 2], [3, 4]], [5, [6, 7, 8]]]}',
    b'{"instances": [[[1, 2], [3, 4]], [[5, 6, 7], 8]]}',
    b'{"instances": [[[1, 2], [3, 4]], [5, [[6, 7], 8]]]}',  # as many "[" as a 2x2x2
    b'{"inputs": {"a": [[1, 2], [3, 4]], "b": [[1, 2], [3, [4]]]}}',
    b'{"inputs": {"a": [[1, 2], [3, [4]]], "b": [[1, 2], [3, 4]]}}',
]
_REGULAR = [
    (b'{"instances": [1, 2, 3]}', {None: (3,)}),
    (b'{"instances": [[1, 2], [3, 4]]}', {None: (2, 2)}),
    (b'{ "instances" : [ [ [1 , 2] ] , [ [3,4] ] ] }', {None: (2, 1, 2)}),
    (b'{"inputs": {"a": [[1, 2], [3, 4]], "b": [5, 6, 7]}}', {"a": (2, 2), "b": (3,)}),
    (b'{"signature_name": "s", "inputs": [[1e3, -2.5]]}', {None: (1, 2)}),
]


@pytest.mark.parametrize("check", ["walk", "text"])
@pytest.mark.parametrize("body", _RAGGED_OF_A_REGULAR_SIZE)
def test_both_regularity_checks_refuse_ragged_tensors(
    body: bytes, check: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walking the lists (few lists for many bytes) and scanning the text (images) must agree."""
    monkeypatch.setattr(
        codec_json_dense, "TREE_CHECK_BYTES_PER_LIST", 0 if check == "walk" else 10**9
    )
    assert codec_json_dense.read_dense_body(body) is None


@pytest.mark.parametrize("check", ["walk", "text"])
@pytest.mark.parametrize(("body", "shapes"), _REGULAR)
def test_both_regularity_checks_take_regular_tensors(
    body: bytes, shapes: dict, check: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        codec_json_dense, "TREE_CHECK_BYTES_PER_LIST", 0 if check == "walk" else 10**9
    )
    dense = codec_json_dense.read_dense_body(body)
    assert dense is not None
    assert {name: shape for name, (_, shape) in dense.tensors.items()} == shapes


def test_a_batch_of_long_rows_is_checked_by_walking_its_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 64x256 batch has 65 lists in ~150 KB: the walk, not the text scan, decides."""
    rows = np.random.default_rng(1).random((64, 256)).round(6).tolist()
    body = orjson.dumps({"instances": rows})

    def no_text_scan(body: bytes, shapes: list) -> bool:
        raise AssertionError("the text scan ran")

    monkeypatch.setattr(codec_json_dense, "_regular", no_text_scan)
    dense = codec_json_dense.read_dense_body(body)
    assert dense is not None and dense.tensors[None][1] == (64, 256)
    rows[10].append(0.5)
    rows[11].pop()
    assert codec_json_dense.read_dense_body(orjson.dumps({"instances": rows})) is None
