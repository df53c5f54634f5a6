"""TF Serving's JSON reader: request body bytes -> the JSON document, or rapidjson's error text.

Data path: codec.parse_predict_json() / codec_example.parse_examples_json() -> load_json_object()
-> the document their decoders walk. Mirrors the rapidjson reader under json_tensor.cc.

TF Serving's rapidjson reader is iterative, accepts NaN, Inf, Infinity (and -Inf, -Infinity,
-NaN), stops after the root value (trailing bytes ignored), treats a NUL byte as the end and skips
a UTF-8 byte-order mark. Tier 1: orjson. Tier 2, only if orjson refused and the body mentions
NaN/Inf: the non-finite tokens outside strings become sentinel strings, orjson again. Tier 3, only
for bodies still refused: CarefulParser, a Python rapidjson that returns the document or
rapidjson's exact error ("JSON Parse error: Invalid value. at offset: 0").
Deliberate differences: invalid UTF-8 inside a string is an error ("Invalid encoding in
string.", rapidjson would pass the raw bytes on); nesting deeper than 1024 levels is an error
(TF Serving overflows its stack, CVE-2025-0649); a duplicated key keeps its last value
(rapidjson's FindMember() sees the first). Pure functions; thread-safe.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Any

import orjson

from app.codec.json_text import json_value_text
from app.core.errors import ServingError, invalid_argument

MAX_JSON_DEPTH = 1024  # orjson's limit; deeper documents are refused (TF Serving crashes on them)
# rapidjson keeps an integer as int64 or uint64; beyond that range it becomes a double.
_INT_MIN, _UINT_MAX = -(1 << 63), (1 << 64) - 1
_INT_TEXT_MAX = len(str(_INT_MIN))  # 20 digits and a sign: any longer integer text is past 64 bits

_PARSE_MESSAGES = {
    "empty": "The document is empty.",
    "value": "Invalid value.",
    "name": "Missing a name for object member.",
    "colon": "Missing a colon after a name of object member.",
    "obj_comma": "Missing a comma or '}' after an object member.",
    "arr_comma": "Missing a comma or ']' after an array element.",
    "hex": "Incorrect hex digit after \\u escape in string.",
    "surrogate": "The surrogate pair in string is invalid.",
    "escape": "Invalid escape character in string.",
    "quote": "Missing a closing quotation mark in string.",
    "encoding": "Invalid encoding in string.",
    "too_big": "Number too big to be stored in double.",
    "fraction": "Miss fraction part in number.",
    "exponent": "Miss exponent in number.",
}


def _parse_error(kind: str, offset: int) -> ServingError:
    return invalid_argument(f"JSON Parse error: {_PARSE_MESSAGES[kind]} at offset: {offset}")


def _depth_error(offset: int) -> ServingError:
    return invalid_argument(
        f"JSON Parse error: The document is nested deeper than {MAX_JSON_DEPTH} levels."
        f" at offset: {offset}"
    )


def load_json_object(body: bytes) -> dict:
    """ParseJson(): the request body as a JSON object, or TF Serving's error for it."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    doc = _load_json(bytes(body))
    if type(doc) is not dict:
        raise invalid_argument(f"JSON Value: {json_value_text(doc)} Is not object")
    return doc


def _bom_length(data: bytes) -> int:
    # rapidjson's EncodedInputStream<UTF8, MemoryStream> skips EF, BB, BF, each only if present.
    pos = 0
    for byte in (0xEF, 0xBB, 0xBF):
        if pos < len(data) and data[pos] == byte:
            pos += 1
    return pos


def _load_json(data: bytes) -> Any:
    start = _bom_length(data)
    payload = data[start:] if start else data
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        doc = _orjson_stop_when_done(payload, exc)
    if doc is _MISSING and b"\\u0000" not in payload and (b"NaN" in payload or b"Inf" in payload):
        doc = _load_with_nonfinite(payload)
    if doc is _MISSING:
        doc = CarefulParser(data, start).parse()
    return doc


_MISSING = object()


def _orjson_stop_when_done(payload: bytes, exc: orjson.JSONDecodeError) -> Any:
    """rapidjson stops after the root value; orjson insists on the end. Retry on the prefix."""
    if exc.msg != "unexpected content after document":
        return _MISSING
    text = payload.decode("utf-8", "surrogateescape")  # orjson counts characters, not bytes
    head = text[: exc.pos].encode("utf-8", "surrogateescape")
    try:
        return orjson.loads(head)
    except orjson.JSONDecodeError:
        return _MISSING


# NaN/Infinity outside strings become strings orjson accepts and that cannot come from the client
# (the body has no \u0000 escape), then go back to floats after parsing.
_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_SENTINEL_TEXT = {b"N": b'"\\u0000N"', b"I": b'"\\u0000I"', b"-I": b'"\\u0000M"'}
_SENTINELS = {"\x00N": math.nan, "\x00I": math.inf, "\x00M": -math.inf}


def _swap_nonfinite(payload: bytes) -> tuple[bytes, int]:
    """Replaces non-finite tokens outside strings; returns the new text and how many."""
    strings = [m.span() for m in _STRING_RE.finditer(payload)]
    starts = [start for start, _ in strings]
    pieces, done, count = [], 0, 0
    for start, end in _nonfinite_spans(payload):
        inside = bisect.bisect_right(starts, start) - 1
        if inside >= 0 and strings[inside][1] > start:
            continue  # part of a string
        first = payload[start : start + 1]  # N or I
        negative = start > 0 and payload[start - 1] == 0x2D  # a leading - is part of the token
        replacement = _SENTINEL_TEXT[b"-I" if negative and first == b"I" else first]
        pieces += (payload[done : start - negative], replacement)
        done, count = end, count + 1
    pieces.append(payload[done:])
    return b"".join(pieces), count


def _nonfinite_spans(payload: bytes) -> list[tuple[int, int]]:
    """Where NaN, Inf and Infinity occur (bytes.find: much faster than a regex scan)."""
    spans = []
    for word in (b"NaN", b"Inf"):
        start = payload.find(word)
        while start >= 0:
            end = start + 3
            if word == b"Inf" and payload.startswith(b"inity", end):
                end += 5
            spans.append((start, end))
            start = payload.find(word, end)
    return sorted(spans)


def _load_with_nonfinite(payload: bytes) -> Any:
    swapped, count = _swap_nonfinite(payload)
    try:
        doc = orjson.loads(swapped)
    except orjson.JSONDecodeError as exc:
        doc = _orjson_stop_when_done(swapped, exc)
        if doc is _MISSING:
            return _MISSING
    if type(doc) is str:
        return _SENTINELS.get(doc, doc)
    return doc if _restore_nonfinite(doc, count) else _MISSING


def _restore_nonfinite(doc: Any, count: int) -> bool:
    """Puts the floats back in place of `count` sentinels; False if one is an object key."""
    stack = [doc] if type(doc) in (list, dict) else []
    while stack and count:  # iterative: documents may be 1024 levels deep
        node = stack.pop()
        is_list = type(node) is list
        if not is_list and any(key in _SENTINELS for key in node):
            return False  # a bare NaN as an object key: let the careful parser say why
        values = node if is_list else node.values()
        kinds = set(map(type, values))  # C speed: most lists hold numbers only
        if str in kinds:
            for key, value in enumerate(node) if is_list else list(node.items()):
                if type(value) is str and value in _SENTINELS:
                    node[key] = _SENTINELS[value]
                    count -= 1
        if list in kinds or dict in kinds:
            stack.extend(value for value in values if type(value) in (list, dict))
    return True


_WS_RE = re.compile(rb"[ \t\n\r]*")
_STR_RUN_RE = re.compile(rb'[^"\\\x00-\x1f]*')
_DIGITS_RE = re.compile(rb"[0-9]*")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {
    ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
    ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t",
}  # fmt: skip
_STRUCTURAL = b"]},:"
_CLOSER = {dict: 0x7D, list: 0x5D}
_NUMBER_RUN_RE = re.compile(
    rb"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?[ \t\n\r]*,[ \t\n\r]*)+"
)


class CarefulParser:
    """rapidjson's iterative reader (kParseNanAndInfFlag | kParseStopWhenDoneFlag), in Python.

    Used only for bodies orjson refuses: yields the document, or rapidjson's error and offset.
    Offsets are absolute byte positions in the body; a NUL byte ends the input as in rapidjson's
    MemoryStream. Iterative, so nesting depth costs no Python stack.
    """

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        nul = data.find(b"\x00", start)
        self.end = len(data) if nul < 0 else nul
        self.pos = start

    def _peek(self) -> int | None:
        self.pos = _WS_RE.match(self.data, self.pos, self.end).end()
        return self.data[self.pos] if self.pos < self.end else None

    def parse(self) -> Any:
        char = self._peek()
        if char is None or char in _STRUCTURAL:
            raise _parse_error("empty", self.pos)  # the iterative reader's Start state
        stack: list[list] = []  # [container, pending key, state]
        too_deep_at = None
        while True:
            if stack:
                char = self._peek()
                if not self._value_or_close_next(stack[-1], char):
                    continue  # consumed a key, a colon or a comma
            if stack and char == _CLOSER[type(stack[-1][0])]:
                self.pos += 1
                value = stack.pop()[0]
            elif stack and self._number_run(stack[-1], char):
                continue
            elif char == 0x7B or char == 0x5B:  # { or [
                self.pos += 1
                stack.append([{} if char == 0x7B else [], None, "first"])
                if len(stack) > MAX_JSON_DEPTH and too_deep_at is None:
                    too_deep_at = self.pos - 1
                continue
            else:
                value = self._scalar(char)
            if not stack:  # the root is complete; whatever follows is ignored
                if too_deep_at is not None:
                    raise _depth_error(too_deep_at)
                return value
            frame = stack[-1]
            if type(frame[0]) is dict:
                frame[0][frame[1]] = value
            else:
                frame[0].append(value)
            frame[2] = "value"

    def _number_run(self, frame: list, char: int | None) -> bool:
        """Swallows a run of "number," array elements at C speed (big numeric bodies)."""
        if type(frame[0]) is not list or char is None or not (char == 0x2D or 0x30 <= char <= 0x39):
            return False
        match = _NUMBER_RUN_RE.match(self.data, self.pos, self.end)
        if match is None:
            return False
        run = match.group().rstrip(b" \t\n\r")[:-1]  # drop the last comma
        try:
            frame[0].extend(orjson.loads(b"[" + run + b"]"))
        except orjson.JSONDecodeError:
            return False  # e.g. a number too big: the token-by-token path reports it
        self.pos = match.end()
        frame[2] = "comma"
        return True

    def _value_or_close_next(self, frame: list, char: int | None) -> bool:
        container, _, state = frame
        if type(container) is dict:
            if state == "first" and char == 0x7D:
                return True
            if state in ("first", "comma"):
                if char != 0x22:
                    raise _parse_error("name", self.pos)
                frame[1] = self._string()
                frame[2] = "key"
                return False
            if state == "key":
                if char != 0x3A:
                    raise _parse_error("colon", self.pos)
                self.pos += 1
                frame[2] = "colon"
                return False
            if state == "colon":
                if char is None or char in _STRUCTURAL:
                    raise _parse_error("value", self.pos)
                return True
            return self._after_value(frame, char, "obj_comma")
        if state == "first" and char == 0x5D:
            return True
        if state in ("first", "comma"):
            if char is None or char in _STRUCTURAL:
                raise _parse_error("value", self.pos)
            return True
        return self._after_value(frame, char, "arr_comma")

    def _after_value(self, frame: list, char: int | None, error: str) -> bool:
        if char == 0x2C:  # ,
            self.pos += 1
            frame[2] = "comma"
            return False
        if char == _CLOSER[type(frame[0])]:
            return True
        raise _parse_error(error, self.pos)

    def _scalar(self, char: int | None) -> Any:
        if char == 0x22:
            return self._string()
        for literal, value in ((b"null", None), (b"true", True), (b"false", False)):
            if char == literal[0]:
                return self._literal(literal, value)
        return self._number()

    def _literal(self, literal: bytes, value: Any) -> Any:
        for i, byte in enumerate(literal):
            if self.pos + i >= self.end or self.data[self.pos + i] != byte:
                raise _parse_error("value", self.pos + i)
        self.pos += len(literal)
        return value

    def _string(self) -> str:
        data, end = self.data, self.end
        pos = self.pos + 1
        parts: list[str] = []
        while True:
            run_end = _STR_RUN_RE.match(data, pos, end).end()
            try:
                parts.append(data[pos:run_end].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise _parse_error("encoding", pos + exc.start) from None
            pos = run_end
            if pos >= end:
                raise _parse_error("quote", pos)
            char = data[pos]
            if char == 0x22:
                self.pos = pos + 1
                return "".join(parts)
            if char != 0x5C:
                raise _parse_error("encoding", pos)  # a raw control character
            pos = self._escape(pos, parts)

    def _escape(self, pos: int, parts: list[str]) -> int:
        """One escape sequence at data[pos] == '\\'; errors point at the backslash, as rapidjson."""
        data, end = self.data, self.end
        kind = data[pos + 1] if pos + 1 < end else None
        if kind in _SIMPLE_ESCAPES:
            parts.append(_SIMPLE_ESCAPES[kind])
            return pos + 2
        if kind != 0x75:  # u
            raise _parse_error("escape", pos)
        code = self._hex4(pos, pos + 2)
        after = pos + 6
        if 0xD800 <= code <= 0xDBFF:
            if after + 2 > end or data[after : after + 2] != b"\\u":
                raise _parse_error("surrogate", pos)
            low = self._hex4(pos, after + 2)
            if not 0xDC00 <= low <= 0xDFFF:
                raise _parse_error("surrogate", pos)
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            after += 6
        elif 0xDC00 <= code <= 0xDFFF:
            raise _parse_error("surrogate", pos)
        parts.append(chr(code))
        return after

    def _hex4(self, escape_pos: int, pos: int) -> int:
        digits = self.data[pos : min(pos + 4, self.end)]
        if len(digits) != 4 or not all(d in _HEX for d in digits):
            raise _parse_error("hex", escape_pos)
        return int(digits, 16)

    def _number(self) -> Any:
        data, end, start = self.data, self.end, self.pos
        pos = start + 1 if start < end and data[start] == 0x2D else start
        char = data[pos] if pos < end else None
        if char == 0x4E or char == 0x49:  # NaN, Inf, Infinity
            return self._nonfinite(pos, negative=pos > start)
        if char is None or not 0x30 <= char <= 0x39:
            raise _parse_error("value", pos)
        pos = pos + 1 if char == 0x30 else _DIGITS_RE.match(data, pos, end).end()
        is_int = True
        if pos < end and data[pos] == 0x2E:  # .
            is_int, pos = False, pos + 1
            if pos >= end or not 0x30 <= data[pos] <= 0x39:
                raise _parse_error("fraction", pos)
            pos = _DIGITS_RE.match(data, pos, end).end()
        if pos < end and data[pos] in b"eE":
            is_int, pos = False, pos + 1
            if pos < end and data[pos] in b"+-":
                pos += 1
            if pos >= end or not 0x30 <= data[pos] <= 0x39:
                raise _parse_error("exponent", pos)
            pos = _DIGITS_RE.match(data, pos, end).end()
        self.pos = pos
        text = data[start:pos]
        # Past 20 digits (and a sign) an integer is beyond 64 bits: float() reads it without
        # int()'s 4300-digit limit, which a 5000-digit number would turn into a 500.
        if is_int and len(text) <= _INT_TEXT_MAX:
            value = int(text)
            if _INT_MIN <= value <= _UINT_MAX:
                return value
        number = float(text)  # integers beyond 64 bits become doubles, as in rapidjson
        if math.isinf(number):
            raise _parse_error("too_big", start)
        return number

    def _nonfinite(self, pos: int, negative: bool) -> float:
        word = b"NaN" if self.data[pos] == 0x4E else b"Inf"
        self.pos = pos
        self._literal(word, None)
        if word == b"Inf" and self.pos < self.end and self.data[self.pos] == 0x69:  # "inity"
            self._literal(b"inity", None)
        if word == b"NaN":
            return math.nan
        return -math.inf if negative else math.inf
