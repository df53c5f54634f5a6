"""A digest of the files a SavedModel version is loaded from, for the result cache's keys.

The manager computes it just before each load (first load or an in-place reload after model
sync or a swapped directory) and stores it on the VersionRecord once the load succeeded;
app/cache/result_cache.py mixes it into every key, so entries written for the old files of a
replaced version are never read for the new ones. It covers the graph (saved_model.pb or .pbtxt) and
the variables index, whose entries carry a CRC32C of every tensor's bytes: new weights change the
index, so the large variables.data shards need not be read.
"""

from __future__ import annotations

import hashlib
import os

DIGEST_BYTES = 16
_FILES = (
    "saved_model.pb",
    "saved_model.pbtxt",
    os.path.join("variables", "variables.index"),
)
_CHUNK_BYTES = 1 << 20


def version_fingerprint(version_path: str) -> bytes:
    """Empty when none of the files can be read (the load will fail and say why)."""
    hasher = hashlib.blake2b(digest_size=DIGEST_BYTES, person=b"tfgate-model")
    found = False
    for name in _FILES:
        try:
            with open(os.path.join(version_path, name), "rb") as f:
                hasher.update(name.encode() + b"\0")
                while chunk := f.read(_CHUNK_BYTES):
                    hasher.update(chunk)
                found = True
        except OSError:
            continue
    return hasher.digest() if found else b""
