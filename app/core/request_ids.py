"""Request ids the gateway makes up for requests that bring none, and how to tell them apart.

Data path position: rest/api.py and rest/v2_routes.py call `new_request_id()` for a request
without a usable X-Request-Id (it goes back in X-Request-Id / X-Tfgate-Request-Id and into
the access log) and pass its counter on with it, so traffic/router.py keeps the arm of a routed
request under the counter in a preallocated ring instead of a per-request dict entry;
`own_counter()` reads the counter back from an id an outcome names.

A random per-process prefix and a counter: unique across restarts and replicas like a random
id, without a getrandom() syscall per request (os.urandom took ~4% of the gateway's CPU at
c=64 in a py-spy profile). Ids only name requests (logs, traffic outcomes behind admin auth);
they are not secrets.
"""

from __future__ import annotations

import itertools
import os
import re

PREFIX = os.urandom(4).hex()
COUNTER_BITS = 32  # 16 hex digits in all; the counter wraps after 2**32 ids
_counter = itertools.count(1)
_OWN_DIGITS = re.compile("[0-9a-f]{8}")


def new_request_id() -> tuple[str, int]:
    """A new id and its counter: the transport hands the counter on with the id, so the
    traffic router files the request under it without parsing the text back."""
    counter = next(_counter) & 0xFFFFFFFF
    return f"{PREFIX}{counter:08x}", counter


def own_counter(request_id: str) -> int | None:
    """The counter of an id shaped like this process's own (its prefix and 8 lowercase hex
    digits); None for any other id. For ids named later (outcomes), not on the request path."""
    if len(request_id) != 16 or not request_id.startswith(PREFIX):
        return None
    match = _OWN_DIGITS.fullmatch(request_id, 8)
    return int(match.group(), 16) if match else None
