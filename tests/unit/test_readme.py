"""The README's flag table is generated from app/settings/settings.py; it must be current."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import flag_table  # noqa: E402


def test_readme_flag_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert flag_table.flag_table() in readme, (
        "README flag table is stale: paste the output of scripts/flag_table.py"
    )


def test_readme_first_screen_has_the_two_commands() -> None:
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:24])
    assert "scripts/serve.sh" in first_screen
    assert "scripts/test.sh" in first_screen
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec scripts/test.sh")
