"""What tfgate imports is what it declares: deptry (configured in pyproject.toml's
[tool.deptry]) over the runtime package and over the bench.

The test suite runs with the dev extra installed, so a runtime import that only an extra
brings in (hpack once was) works here and breaks `pip install tfgate` and the image: these
checks read the declarations, not the environment. tests/integration/test_production_install.py
proves the same on a real install from requirements.lock.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def deptry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deptry", "--no-ansi", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_runtime_package_imports_exactly_its_dependencies() -> None:
    # app/, workers/ and proto/ against [project] dependencies only (the extras are dev groups
    # in [tool.deptry]): a missing one is DEP001/DEP003/DEP004, an unused one DEP002.
    result = deptry("app", "workers", "proto")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No dependency issues found" in result.stdout + result.stderr


def test_bench_imports_only_dependencies_and_its_extra() -> None:
    # `tfgate bench`: the runtime dependencies plus the bench extra; whatever is declared for
    # the server alone is not "unused" here (DEP002 off), an import that only the dev extra
    # declares is still an error.
    result = deptry("bench", "--optional-dependencies-dev-groups", "dev", "--ignore", "DEP002")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No dependency issues found" in result.stdout + result.stderr
