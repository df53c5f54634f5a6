"""Print the README's flag table from app/settings/settings.py's FLAGS (the one source of truth).

`.venv/bin/python scripts/flag_table.py` regenerates it; tests/unit/test_readme.py checks
the README carries the current table.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from app.settings.flags import FLAGS


def flag_table() -> str:
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    for flag in FLAGS:
        if flag.kind is bool:
            default = str(flag.default).lower()
        elif flag.name in ("rest_api_num_threads", "num_tflite_pools"):
            default = "4 x CPUs" if "threads" in flag.name else "CPUs"
        else:
            default = repr(flag.default) if flag.kind is str else str(flag.default)
        note = " *(accepted, no effect)*" if flag.ignored else ""
        lines.append(f"| `--{flag.name}` | `{default}` | {flag.help}{note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(flag_table())
