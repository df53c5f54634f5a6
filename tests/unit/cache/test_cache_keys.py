"""app/cache/keys.py: what goes into a key, the entry codec, row split/merge, Cache-Control."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest

from app.cache.keys import (
    KEY_PREFIX,
    CachePolicy,
    EntryError,
    KeyContext,
    decode_entry,
    encode_entry,
    merge_rows,
    parse_cache_control,
    row_keys,
    split_rows,
    take_rows,
    whole_key,
)
from app.core.types import row_count

BASE = KeyContext("dnn", 3, "serving_default", ("y",))
X = np.arange(12, dtype=np.float32).reshape(3, 4)


def _strings(*values: bytes) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def first_key(context: KeyContext, inputs: dict[str, np.ndarray]) -> bytes:
    rows = row_count(inputs)
    assert rows
    return row_keys(context, inputs, rows)[0]


# --- one field changed -> a different key ---

CHANGES = [
    ("model name", dataclasses.replace(BASE, model="dnn2"), {"x": X}),
    ("version", dataclasses.replace(BASE, version=4), {"x": X}),
    ("signature", dataclasses.replace(BASE, signature="other"), {"x": X}),
    ("output filter", dataclasses.replace(BASE, output_aliases=("y", "z")), {"x": X}),
    ("output order", dataclasses.replace(BASE, output_aliases=()), {"x": X}),
    ("input name", BASE, {"x2": X}),
    ("dtype", BASE, {"x": X.astype(np.float64)}),
    ("dtype, same bytes", BASE, {"x": X.view(np.int32)}),
    ("inner shape, same bytes", BASE, {"x": X.reshape(3, 2, 2)}),
    ("bytes", BASE, {"x": X + np.float32(1)}),
    ("an extra input", BASE, {"x": X, "w": X}),
]


@pytest.mark.parametrize(("what", "context", "inputs"), CHANGES, ids=[c[0] for c in CHANGES])
def test_changing_any_field_changes_the_key(
    what: str, context: KeyContext, inputs: dict[str, np.ndarray]
) -> None:
    assert first_key(context, inputs) != first_key(BASE, {"x": X})


def test_row_key_depends_only_on_its_row_not_on_the_rest_of_the_request() -> None:
    keys = row_keys(BASE, {"x": X}, 3)
    assert len(set(keys)) == 3
    alone = row_keys(BASE, {"x": X[1:2]}, 1)
    reordered = row_keys(BASE, {"x": X[::-1]}, 3)
    assert alone[0] == keys[1]
    assert reordered == keys[::-1]


def test_keys_are_stable_and_readable() -> None:
    key = first_key(BASE, {"x": X})
    assert key == first_key(BASE, {"x": X.copy()})
    assert key.startswith(KEY_PREFIX + b"dnn:3:")
    assert len(key) == len(KEY_PREFIX + b"dnn:3:") + 64  # blake2b-256 hex


def test_non_contiguous_input_hashes_like_its_contiguous_copy() -> None:
    wide = np.arange(24, dtype=np.float32).reshape(3, 8)
    view = wide[:, ::2]
    assert row_keys(BASE, {"x": view}, 3) == row_keys(BASE, {"x": view.copy()}, 3)


def test_input_order_does_not_matter() -> None:
    a, b = X, X * 2
    assert first_key(BASE, {"a": a, "b": b}) == first_key(BASE, {"b": b, "a": a})


STRING_CASES = [
    ("content", [b"ab", b"c"], [b"ab", b"d"]),
    ("boundary", [b"ab", b"c"], [b"a", b"bc"]),
]


@pytest.mark.parametrize(("what", "left", "right"), STRING_CASES, ids=[c[0] for c in STRING_CASES])
def test_string_rows_are_length_prefixed(what: str, left: list, right: list) -> None:
    lhs = np.empty((1, 2), dtype=object)
    lhs[0] = left
    rhs = np.empty((1, 2), dtype=object)
    rhs[0] = right
    assert first_key(BASE, {"s": lhs}) != first_key(BASE, {"s": rhs})


def test_serialized_examples_key_per_example() -> None:
    examples = _strings(b"example-1", b"example-2", b"example-1")
    keys = row_keys(BASE, {"inputs": examples}, 3)
    assert keys[0] == keys[2] != keys[1]


def test_whole_key_differs_from_row_key_and_covers_shape() -> None:
    inputs = {"x": X[:1]}
    assert whole_key(BASE, inputs) != row_keys(BASE, inputs, 1)[0]
    scalar = {"x": np.float32(2.0) * np.ones((), np.float32)}
    assert whole_key(BASE, scalar) != whole_key(BASE, {"x": np.ones((1,), np.float32) * 2})
    assert whole_key(BASE, scalar) == whole_key(BASE, {"x": np.array(2.0, np.float32)})


# --- row_count ---

ROW_COUNTS = [
    ("one input", {"x": np.zeros((5, 2))}, 5),
    ("agreeing inputs", {"a": np.zeros((2, 3)), "b": np.zeros((2,))}, 2),
    ("scalar input", {"a": np.zeros((2, 3)), "b": np.zeros(())}, None),
    ("dim 0 disagrees", {"a": np.zeros((2, 3)), "b": np.zeros((3,))}, None),
    ("no inputs", {}, None),
    ("empty batch", {"x": np.zeros((0, 2))}, 0),
]


@pytest.mark.parametrize(("what", "inputs", "rows"), ROW_COUNTS, ids=[c[0] for c in ROW_COUNTS])
def test_row_count(what: str, inputs: dict, rows: int | None) -> None:
    assert row_count(inputs) == rows


# --- entries ---

ENTRIES = [
    ("float32 row", {"y": np.array([1.5, -2.0], np.float32)}),
    ("scalar", {"y": np.array(3.25, np.float64)}),
    ("int64 matrix", {"y": np.arange(6, dtype=np.int64).reshape(2, 3)}),
    ("bool", {"flag": np.array([True, False])}),
    ("half", {"h": np.array([1.0, 2.5], np.float16)}),
    ("bfloat16", {"b": np.array([[1.0, 0.1], [-np.inf, 3e38]], ml_dtypes.bfloat16)}),
    ("complex", {"c": np.array([1 + 2j], np.complex64)}),
    ("big-endian input", {"b": np.array([1.0, 2.0], ">f4")}),
    ("strings", {"classes": _strings(b"cat", b"", b"\x00\xff")}),
    ("empty", {"y": np.zeros((0, 3), np.float32)}),
    ("two outputs", {"classes": _strings(b"a"), "scores": np.array([0.5], np.float32)}),
]


@pytest.mark.parametrize(("what", "outputs"), ENTRIES, ids=[c[0] for c in ENTRIES])
def test_entry_round_trip(what: str, outputs: dict[str, np.ndarray]) -> None:
    decoded = decode_entry(encode_entry(outputs))
    assert list(decoded) == list(outputs)
    for alias, array in outputs.items():
        assert decoded[alias].shape == array.shape
        assert decoded[alias].dtype == array.dtype.newbyteorder("=") or array.dtype == object
        assert decoded[alias].tolist() == array.tolist()


def test_entry_is_compact_binary() -> None:
    row = {"y": np.zeros(256, np.float32)}
    assert len(encode_entry(row)) < 256 * 4 + 32


CORRUPT = [
    ("empty", b""),
    ("wrong magic", b"XXXX\x01\x00"),
    ("truncated", encode_entry({"y": np.zeros(4, np.float32)})[:-3]),
    ("trailing", encode_entry({"y": np.zeros(4, np.float32)}) + b"x"),
    ("object dtype trick", encode_entry({"y": np.zeros(1, np.float32)}).replace(b"<f4", b"|O1")),
]


@pytest.mark.parametrize(("what", "entry"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_entries_raise_entry_error(what: str, entry: bytes) -> None:
    with pytest.raises(EntryError):
        decode_entry(entry)


def test_bfloat16_entry_keeps_the_bit_patterns() -> None:
    bits = [0x3F80, 0x3DCD, 0xFF80, 0x7F80]
    entry = encode_entry({"b": np.array(bits, np.uint16).view(ml_dtypes.bfloat16)})
    assert b"bfloat16" in entry and b"<V2" not in entry
    assert entry.endswith(np.array(bits, "<u2").tobytes())
    decoded = decode_entry(entry)["b"]
    assert decoded.dtype == np.dtype(ml_dtypes.bfloat16) and decoded.view(np.uint16).tolist() == bits
    # A wrong byte count is corrupt, as for any numeric output.
    with pytest.raises(EntryError):
        decode_entry(entry.replace(b"\x08\x00\x00\x00\x00\x00\x00\x00", b"\x06" + b"\x00" * 7))


def test_unencodable_dtype() -> None:
    with pytest.raises(EntryError):
        encode_entry({"u": np.array(["text"])})


# --- rows ---


def test_take_split_merge() -> None:
    outputs = {"y": np.arange(8, dtype=np.float32).reshape(4, 2), "n": np.arange(4)}
    pieces = split_rows(outputs, 4)
    assert pieces is not None and len(pieces) == 4
    merged = merge_rows([pieces[3], pieces[0]], ["y", "n"])
    assert merged is not None
    assert merged["y"].tolist() == [[6, 7], [0, 1]]
    assert merged["n"].tolist() == [3, 0]
    assert take_rows({"x": X}, [2, 0])["x"].tolist() == [X[2].tolist(), X[0].tolist()]


def test_split_refuses_outputs_that_are_not_row_aligned() -> None:
    assert split_rows({"y": np.zeros((3, 2)), "total": np.zeros(())}, 3) is None
    assert split_rows({"y": np.zeros((2, 2))}, 3) is None


MISMATCHED = [
    ("dtype", {"y": np.zeros(2, np.float64)}),
    ("inner shape", {"y": np.zeros(3, np.float32)}),
    ("missing alias", {"z": np.zeros(2, np.float32)}),
]


@pytest.mark.parametrize(("what", "other"), MISMATCHED, ids=[c[0] for c in MISMATCHED])
def test_merge_refuses_disagreeing_rows(what: str, other: dict) -> None:
    assert merge_rows([{"y": np.zeros(2, np.float32)}, other], ["y"]) is None


# --- Cache-Control ---

POLICIES = [
    (None, CachePolicy.DEFAULT),
    ("", CachePolicy.DEFAULT),
    ("max-age=60", CachePolicy.DEFAULT),
    ("no-cache", CachePolicy.NO_CACHE),
    ("No-Cache", CachePolicy.NO_CACHE),
    ("max-age=0", CachePolicy.NO_CACHE),
    ("no-store", CachePolicy.NO_STORE),
    ("no-cache, no-store", CachePolicy.NO_STORE),
    ("no-store,no-cache", CachePolicy.NO_STORE),
    ("private, no-cache", CachePolicy.NO_CACHE),
    ('no-cache="set-cookie"', CachePolicy.NO_CACHE),
]


@pytest.mark.parametrize(("header", "policy"), POLICIES)
def test_parse_cache_control(header: str | None, policy: CachePolicy) -> None:
    assert parse_cache_control(header) is policy


def test_policy_read_write() -> None:
    assert (CachePolicy.DEFAULT.read, CachePolicy.DEFAULT.write) == (True, True)
    assert (CachePolicy.NO_CACHE.read, CachePolicy.NO_CACHE.write) == (False, True)
    assert (CachePolicy.NO_STORE.read, CachePolicy.NO_STORE.write) == (False, False)


def test_prefix_memo_is_never_mutated() -> None:
    inputs = {"x": np.array(1.0, np.float32)}  # whole-request key
    first = whole_key(BASE, inputs)
    whole_key(BASE, {"x": np.array(2.0, np.float32)})
    assert whole_key(BASE, inputs) == first
    assert row_keys(BASE, {"x": X}, 3) == row_keys(BASE, {"x": X.copy()}, 3)


@pytest.mark.parametrize(
    "dtype",
    [
        np.float16, np.float32, np.float64, np.int8, np.uint64, np.bool_, np.complex64,
        ml_dtypes.bfloat16,
    ],
)
def test_every_numeric_dtype_hashes_per_row(dtype: type) -> None:
    array = np.zeros((3, 2), dtype)
    array[1] = 1
    keys = row_keys(BASE, {"x": array}, 3)
    assert keys[0] == keys[2] != keys[1]
    assert keys[1] == row_keys(BASE, {"x": array[1:2].copy()}, 1)[0]


def test_keys_change_with_the_loaded_files_fingerprint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A version replaced in place (same number, new weights) gets new keys: the digest of
    its graph and variables index is part of every key."""
    import shutil

    from app.lifecycle.fingerprint import version_fingerprint

    version = tmp_path / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    (version / "variables" / "variables.index").write_bytes(b"index with crc32c a")
    (version / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights a")
    first = version_fingerprint(str(version))
    shutil.copytree(version, tmp_path / "copy")
    assert version_fingerprint(str(tmp_path / "copy")) == first  # same files, same digest
    (version / "variables" / "variables.index").write_bytes(b"index with crc32c b")
    second = version_fingerprint(str(version))
    assert first != second and len(first) == 16
    assert version_fingerprint(str(tmp_path / "missing")) == b""

    x = {"x": np.arange(4, dtype=np.float32).reshape(2, 2)}
    old = dataclasses.replace(BASE, fingerprint=first)
    new = dataclasses.replace(BASE, fingerprint=second)
    assert set(row_keys(old, x, 2)).isdisjoint(row_keys(new, x, 2))
    assert whole_key(old, x) != whole_key(new, x)
    assert row_keys(old, x, 2) == row_keys(dataclasses.replace(BASE, fingerprint=first), x, 2)
