r"""JSON text as TF Serving writes it: numbers, strings and values, byte for byte (rapidjson).

Data path: the last step of every response (codec/predict_response.py and codec/example.py lay
bodies out from these texts) and of every error message that quotes a JSON value
(json_value_text()).

Numbers: WriteDecimal() for float/double: %g with 6 significant digits if that reads back as
the same float (double for DT_DOUBLE), else %.9g (%.17g); ".0" appended when the text has no
'.' and no 'e' (3 -> 3.0, 9000000 -> 9e+06, 0.00003 -> 3e-05, 999999 -> 999999.0); NaN,
Infinity, -Infinity bare. Integers and bools plain. Strings: rapidjson escapes \" \\ \b \f
\n \r \t and other bytes below 0x20 as \u00XX (upper-case hex); everything else raw UTF-8.
TF Serving writes non-UTF-8 bytes raw (producing invalid JSON); we write U+FFFD per invalid
sequence instead, so a client that needs the exact bytes should name the output *_bytes.
float32_matrix() and integer_matrix() produce the same texts for whole arrays without a Python
loop. Pure functions; thread-safe.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import numpy as np

_MAX_VALUE_TEXT = 65536  # cap on a JSON value echoed into an error message
_MISSING = object()

_ESCAPE_RE = re.compile('[\\x00-\\x1f"\\\\]')
_ESCAPES = {chr(i): f"\\u{i:04X}" for i in range(32)} | {
    "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\",
}  # fmt: skip


def json_quote(text: str) -> str:
    """rapidjson Writer::String(): quotes and escapes; non-ASCII stays raw."""
    return '"' + _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], text) + '"'


def json_quote_bytes(raw: bytes | str) -> bytes:
    """A DT_STRING element as a JSON string; invalid UTF-8 becomes U+FFFD (TF writes it raw)."""
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")
    return json_quote(text).encode("utf-8", "replace")


def _to_float32(value: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def decimal_text_f32(value: float) -> str:
    """WriteDecimal<float>(); value must be a float32 value held in a Python float."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    if _to_float32(float(text)) != value:
        text = f"{value:.9g}"
    return text if ("." in text or "e" in text) else text + ".0"


_F32_STRUCT = struct.Struct("f")


def float32_leaf_texts(values: list[float]) -> list[bytes]:
    """decimal_text_f32(v).encode() for each float32 value, with the per-call overhead inlined
    (small tensors: a response's 10 class scores are written ~2x faster than call by call)."""
    pack, unpack = _F32_STRUCT.pack, _F32_STRUCT.unpack
    out = []
    for value in values:
        text = f"{value:.6g}"
        if text[-1] in "fn":  # inf, -inf, nan
            out.append(decimal_text_f32(value).encode())
            continue
        try:
            exact = unpack(pack(float(text)))[0] == value
        except OverflowError:
            exact = False
        if not exact:
            text = f"{value:.9g}"
        out.append((text if "." in text or "e" in text else text + ".0").encode())
    return out


def decimal_text_f64(value: float) -> str:
    """WriteDecimal<double>()."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    if float(text) != value:
        text = f"{value:.17g}"
    return text if ("." in text or "e" in text) else text + ".0"


def _shortest_double_text(value: float) -> str:
    """rapidjson Writer::Double(): shortest digits (Grisu; here repr) laid out by Prettify()."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    k = int(exp_text or 0) - len(frac_part)  # |value| == int(digits) * 10**k
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits, kk = stripped, len(stripped) + k
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif len(digits) == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return "-" + text if value < 0 else text


def _scalar_text(value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        return json_quote(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    if not math.isfinite(value):
        return None  # rapidjson's Writer refuses NaN/Inf and abandons the rest of the value
    return _shortest_double_text(value)


def json_value_text(value: Any) -> str:
    """JsonValueToString(): PrettyWriter text of a value, as TF Serving quotes it in messages.

    Iterative (documents may nest 1024 levels); cut after _MAX_VALUE_TEXT characters with "...".
    """
    if type(value) is float:
        if -3.4028234e38 <= value <= 3.4028234e38:  # rapidjson IsFloat()
            return decimal_text_f32(float(np.float32(value)))
        return decimal_text_f64(value)
    out: list[str] = []
    size = 0
    stack: list[list] = []  # [iterator, is_object, members written]
    current = value
    while size <= _MAX_VALUE_TEXT:
        kind = type(current)
        if kind is dict or kind is list:
            text = ("{" if kind is dict else "[") if current else ("{}" if kind is dict else "[]")
            if current:
                stack.append([iter(current.items() if kind is dict else current), kind is dict, 0])
        else:
            text = _scalar_text(current)
            if text is None:
                return "".join(out)
        between, current = _next_member(stack)
        out += (text, between)
        size += len(text) + len(between)
        if current is _MISSING:
            return "".join(out)
    return "".join(out) + "..."


def _next_member(stack: list[list]) -> tuple[str, Any]:
    """Closes finished containers; returns the text before the next value, and that value."""
    pieces = []
    while stack:
        frame = stack[-1]
        item = next(frame[0], _MISSING)
        if item is _MISSING:
            stack.pop()
            pieces.append("\n" + "    " * len(stack) + ("}" if frame[1] else "]"))
            continue
        pieces.append(("," if frame[2] else "") + "\n" + "    " * len(stack))
        frame[2] += 1
        if not frame[1]:
            return "".join(pieces), item
        key, item = item
        return "".join(pieces) + json_quote(key) + ": ", item
    return "".join(pieces), _MISSING


def json_type_name(value: Any) -> str:
    """JsonTypeString()."""
    if value is None:
        return "Null"
    if type(value) is bool:
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


# ---------------------------------------------------------------------------------------------
# Vectorised integer text: same bytes as str(), without a Python loop
# ---------------------------------------------------------------------------------------------

_U64_POW10 = np.array([10**k for k in range(20)], dtype=np.uint64)


def integer_matrix(flat: np.ndarray) -> np.ndarray:
    """Decimal text of integers as a NUL-padded (n, width) uint8 matrix, right-aligned."""
    if flat.dtype.kind == "u":
        magnitude = flat.astype(np.uint64)
        negative = np.zeros(flat.shape, dtype=np.bool_)
    else:
        value = flat.astype(np.int64)
        negative = value < 0
        # -(v + 1) + 1 reaches |INT64_MIN| without overflowing int64.
        magnitude = np.where(
            negative, (-(value + 1)).astype(np.uint64) + np.uint64(1), value.astype(np.uint64)
        )
    width = len(str(int(magnitude.max())))
    powers = _U64_POW10[:width][::-1]
    chars = np.empty((flat.size, width + 1), dtype=np.uint8)
    chars[:, 1:] = (magnitude[:, None] // powers[None, :]) % np.uint64(10) + np.uint64(48)
    digits = np.maximum(1, (magnitude[:, None] >= _U64_POW10[None, :width]).sum(axis=1))
    first = width + 1 - digits  # column of the leading digit
    chars[np.arange(width + 1)[None, :] < first[:, None]] = 0
    rows = np.flatnonzero(negative)
    chars[rows, first[rows] - 1] = ord("-")
    return chars


# ---------------------------------------------------------------------------------------------
# Vectorised WriteDecimal<float>: same bytes as decimal_text_f32(), without a Python loop
# ---------------------------------------------------------------------------------------------
# Per element we find the decimal digits numpy-side (6 significant digits when they round-trip,
# else 9, both correctly rounded), then pick a "layout": the character template for its sign,
# exponent and digit count, into which the digit characters are scattered. Near-ties, where
# float64 arithmetic cannot be trusted to round like printf, are redone with Python formatting.

_F32_WIDTH = 16  # longest text: "-0.000123456789" or "-1.23456789e-38" (15)
_POW10 = 10.0 ** np.arange(23)  # exact in float64
# _SCALE[k] is 10**k correctly rounded, for the k in [-30, 53] float32 magnitudes need; negative
# k index from the end.
_SCALE = np.array([float(f"1e{k}") for k in range(54)] + [float(f"1e{k}") for k in range(-30, 0)])


def _f32_layouts() -> tuple[np.ndarray, np.ndarray]:
    """Templates (ids below) and, per template, the column of each of 9 digits + 2 exponent digits.

    ids: fixed-point (sign*13 + exp+4)*9 + ndigits-1 for exp in [-4, 8]; 234 + (sign*2 +
    exp<0)*9 + ndigits-1 for scientific; 270 NaN, 271 Infinity, 272 -Infinity, 273/274 (-)0.0.
    """
    layouts: list[list] = []
    for negative in (0, 1):
        sign = ["-"] * negative
        for exp in range(-4, 9):
            for ndigits in range(1, 10):
                if exp >= 0:
                    tokens = [("d", j) if j < ndigits else "0" for j in range(exp + 1)] + ["."]
                    tokens += [("d", j) for j in range(exp + 1, ndigits)] or ["0"]
                else:
                    tokens = ["0", ".", *["0"] * (-exp - 1), *[("d", j) for j in range(ndigits)]]
                layouts.append(sign + tokens)
    for negative in (0, 1):
        for exp_negative in (0, 1):
            for ndigits in range(1, 10):
                fraction = ["."] + [("d", j) for j in range(1, ndigits)] if ndigits > 1 else []
                exponent = ["e", "-" if exp_negative else "+", ("x", 0), ("x", 1)]
                layouts.append(["-"] * negative + [("d", 0)] + fraction + exponent)
    layouts += [list(text) for text in ("NaN", "Infinity", "-Infinity", "0.0", "-0.0")]
    templates = np.zeros((len(layouts), _F32_WIDTH + 1), dtype=np.uint8)
    columns = np.full((len(layouts), 11), _F32_WIDTH, dtype=np.int32)  # spare column: unused
    for index, tokens in enumerate(layouts):
        for column, token in enumerate(tokens):
            if isinstance(token, tuple):
                columns[index, token[1] + (9 if token[0] == "x" else 0)] = column
            else:
                templates[index, column] = ord(token)
    return templates, columns


_F32_TEMPLATES, _F32_COLUMNS = _f32_layouts()


# Three decimal digits at a time: the characters of 000..999 (in 4-byte cells, so one uint32
# gather fetches them), and each group's trailing zeros.
_DIGITS3 = np.array([f"{i:03d}".encode() for i in range(1000)], dtype="S4").view(np.uint32)
_TRAILING3 = np.array([3 - len(f"{i:03d}".rstrip("0")) for i in range(1000)], dtype=np.int64)


_CHUNK = 8192  # elements per pass: temporaries stay below malloc's mmap threshold (no page faults)


def float32_matrix(flat: np.ndarray) -> np.ndarray:
    """decimal_text_f32() of every element, as a NUL-padded (n, 16) uint8 matrix."""
    x = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1)
    if x.size <= _CHUNK:
        return _float32_chunk(x)
    out = np.empty((x.size, _F32_WIDTH), dtype=np.uint8)
    for start in range(0, x.size, _CHUNK):
        out[start : start + _CHUNK] = _float32_chunk(x[start : start + _CHUNK])
    return out


def _float32_chunk(x: np.ndarray) -> np.ndarray:
    count = x.size
    negative = np.signbit(x)
    with np.errstate(invalid="ignore"):  # signalling NaN payloads
        magnitude = np.abs(x).astype(np.float64)
    normal = np.isfinite(x) & (magnitude > 0)
    # Small integer types keep temporaries small: large fresh buffers cost page faults.
    if normal.all():  # the usual case: no fancy indexing needed
        ids, digits, exps = _float32_layout_ids(magnitude, negative)
    else:
        ids = np.where(np.isnan(x), 270, np.where(negative, 272, 271)).astype(np.int32)
        ids = np.where(magnitude == 0, 273 + negative.astype(np.int32), ids)
        digits = np.zeros(count, dtype=np.int32)
        exps = np.zeros(count, dtype=np.int32)
        rows = np.flatnonzero(normal)
        if rows.size:
            ids[rows], digits[rows], exps[rows] = _float32_layout_ids(
                magnitude[rows], negative[rows]
            )
    high, rest = np.divmod(digits, 1_000_000)
    middle, low = np.divmod(rest, 1000)
    groups = np.stack([_DIGITS3[part] for part in (high, middle, low, exps)], axis=1)
    sources = groups.view(np.uint8)[:, [0, 1, 2, 4, 5, 6, 8, 9, 10, 13, 14]]
    text = np.take(_F32_TEMPLATES, ids, axis=0)
    cells = np.take(_F32_COLUMNS, ids, axis=0)
    cells += (np.arange(count, dtype=np.int32) * (_F32_WIDTH + 1))[:, None]
    text.reshape(-1)[cells] = sources
    return text[:, :_F32_WIDTH]


def _float32_layout_ids(
    magnitude: np.ndarray, negative: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layout id, 9-digit significand and |exponent| of positive finite magnitudes."""
    digits, exps, precision = _float32_decimal(magnitude)
    ndigits = 9 - _trailing_zeros(digits)
    sign = negative.astype(np.int32)
    fixed = (exps >= -4) & (exps < precision)
    fixed_id = (sign * 13 + np.clip(exps, -4, 8) + 4) * 9 + ndigits - 1
    sci_id = 234 + (sign * 2 + (exps < 0)) * 9 + ndigits - 1
    ids = np.where(fixed, fixed_id, sci_id).astype(np.int32)
    return ids, digits.astype(np.int32), np.abs(exps).astype(np.int32)


def _trailing_zeros(digits: np.ndarray) -> np.ndarray:
    """Trailing zeros of 9-digit significands (never all zero)."""
    if (digits % 10).all():
        return np.zeros(digits.shape, dtype=np.int64)  # typical of computed floats
    high, rest = np.divmod(digits, 1_000_000)
    middle, low = np.divmod(rest, 1000)
    return np.where(
        low != 0,
        _TRAILING3[low],
        np.where(middle != 0, 3 + _TRAILING3[middle], 6 + _TRAILING3[high]),
    )


def _float32_decimal(magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(9-digit significand, decimal exponent, 6 or 9) per positive finite float32 value."""
    exps = np.floor(np.log10(magnitude)).astype(np.int64)
    scaled = magnitude * _SCALE[8 - exps]  # two roundings: relative error <= 2**-52
    fix = (scaled >= 1e9).astype(np.int64) - (scaled < 1e8)
    if fix.any():  # log10 was off by one next to a power of ten
        exps += fix
        scaled = magnitude * _SCALE[8 - exps]
    r9, e9, unsure9 = _round_scaled(scaled, exps, 1e8)
    r6, e6, unsure6 = _round_scaled(scaled / 1000, exps, 1e5)
    # Does the 6-digit decimal read back as the same float? (One exact power: one rounding.)
    power = e6 - 5
    factor = _POW10[np.minimum(np.abs(power), 22)]
    back = np.where(power >= 0, r6 * factor, r6 / factor).astype(np.float32)
    short = back == magnitude.astype(np.float32)
    digits = np.where(short, r6.astype(np.int64) * 1000, r9.astype(np.int64))
    exps = np.where(short, e6, e9)
    precision = np.where(short, 6, 9)
    # Redo in Python: near-ties, and read-backs that needed more than one power of ten.
    redo = np.flatnonzero(unsure6 | (np.abs(power) > 22) | (~short & unsure9))
    for i in redo.tolist():
        digits[i], exps[i], precision[i] = _float32_decimal_exact(float(magnitude[i]))
    return digits, exps, precision


def _round_scaled(
    scaled: np.ndarray, exps: np.ndarray, low: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rounds values scaled into [low, 10*low): (digits as float, exponent, near-tie flag)."""
    rounded = np.rint(scaled)
    unsure = np.abs(scaled - np.floor(scaled) - 0.5) < low * 1e-14  # far above the error
    carry = rounded >= 10 * low
    return np.where(carry, low, rounded), exps + carry, unsure


def _float32_decimal_exact(value: float) -> tuple[int, int, int]:
    text = f"{value:.5e}"
    if _to_float32(float(text)) != value:
        mantissa, _, exp = f"{value:.8e}".partition("e")
        return int(mantissa.replace(".", "")), int(exp), 9
    mantissa, _, exp = text.partition("e")
    return int(mantissa.replace(".", "")) * 1000, int(exp), 6
