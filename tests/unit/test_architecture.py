"""The layout DESIGN.md draws, checked on the source: no import cycles in app/ or bench/, workers/
never imports app/, and each app/ folder imports only the folders below it.

Every import statement counts, wherever it sits: at module level, inside a function, under
`if TYPE_CHECKING:` (a cycle that only type checkers see still ties the modules together for a
reader, and turns into a runtime cycle the day someone needs the name at runtime).

The allowed folder imports (a folder may always import its own modules; app/main.py and
app/__main__.py, the composition root and the CLI, may import every folder; nothing imports them):

    folder       may import
    core         -                  (types, errors, signatures, TF wire types: the bottom)
    ops          core               (metrics and logs: fed through hooks, see nothing above)
    settings     core
    codec        core               (pure functions over core's types)
    traffic      core               (traffic rules, arm choice, statistics: pure but for counters)
    runtime      core ops settings
    cache        core ops settings
    lifecycle    core ops settings runtime traffic
    serving      core ops settings codec runtime cache lifecycle traffic
    admin        core ops settings lifecycle traffic
    sync         core ops settings lifecycle
    dashboard    core ops           (the load sampler reads metrics; the rest is passed in)
    rpc/h2       core ops           (the HTTP/2 transport knows frames and calls, not servicers)
    rest         core ops settings codec serving admin lifecycle dashboard
    rpc          core ops settings codec serving admin lifecycle rpc/h2

DESIGN.md's diagram lists the folders top-down from core without drawing the edges; this table
reads them off its text: core at the bottom, settings and codec over core, the request path
(serving) over cache, lifecycle and runtime, the transports (rest, rpc) at the top, ops low
because every layer feeds metrics.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

ALLOWED: dict[str, frozenset[str]] = {
    folder: frozenset(imports.split())
    for folder, imports in {
        "core": "",
        "ops": "core",
        "settings": "core",
        "codec": "core",
        "traffic": "core",
        "runtime": "core ops settings",
        "cache": "core ops settings",
        "lifecycle": "core ops settings runtime traffic",
        "serving": "core ops settings codec runtime cache lifecycle traffic",
        "admin": "core ops settings lifecycle traffic",
        "sync": "core ops settings lifecycle",
        "dashboard": "core ops",
        "rpc/h2": "core ops",
        "rest": "core ops settings codec serving admin lifecycle dashboard",
        "rpc": "core ops settings codec serving admin lifecycle rpc/h2",
    }.items()
}
ROOT_MODULES = {"app.main", "app.__main__"}  # the composition root and the CLI


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_under(*tops: str) -> dict[str, pathlib.Path]:
    return {
        module_name(path): path
        for top in tops
        for path in sorted((ROOT / top).rglob("*.py"))
        # not __pycache__, nor a venv beside the code (bench/.venv-bentoml, BentoML's own)
        if "__pycache__" not in path.parts
        and not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
    }


MODULES = modules_under("app", "bench", "workers")


def imported_modules(name: str, path: pathlib.Path) -> set[str]:
    """Every module of MODULES that `name` imports, anywhere in the file. `from a import b`
    counts as importing the module a.b when that is a module, else the package a."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import a.b.c` runs a, a.b and a.b.c; the package __init__ files only hold
            # docstrings, so the module itself is the edge that matters
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def folder_of(name: str) -> str | None:
    """The layer of an app module: 'rpc/h2' for the transport, else its top folder; None for
    the app package itself and the root modules."""
    parts = name.split(".")
    if parts[0] != "app" or len(parts) < 3:
        return None
    if parts[1] == "rpc" and parts[2] == "h2" and len(parts) > 3:
        return "rpc/h2"
    return parts[1]


def test_the_graph_sees_every_kind_of_import(tmp_path: pathlib.Path) -> None:
    # the checks below are only as good as the graph: a TYPE_CHECKING import, a
    # function-local one and a relative one are all edges
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from app.core import errors\n"
        "def f():\n    import app.core.types\n"
        "from . import signatures\n",
        encoding="utf-8",
    )
    edges = imported_modules("app.core.probe", probe)
    assert edges == {"app.core.errors", "app.core.types", "app.core.signatures"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("top", ["app", "bench"])
def test_no_import_cycles(top: str) -> None:
    graph = {
        name: {t for t in targets if t.split(".")[0] == top}
        for name, targets in GRAPH.items()
        if name.split(".")[0] == top
    }
    found = cycles(graph)
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_workers_never_import_app() -> None:
    offending = {
        name: sorted(t for t in targets if t.split(".")[0] == "app")
        for name, targets in GRAPH.items()
        if name.split(".")[0] == "workers"
    }
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_app_folders_import_only_the_folders_below_them() -> None:
    folders = {
        path.parent.relative_to(ROOT / "app").as_posix()
        for path in (ROOT / "app").rglob("__init__.py")
        if path.parent != ROOT / "app"
    }
    assert folders == set(ALLOWED), "a new folder needs its place in ALLOWED (and DESIGN.md)"
    wrong: list[str] = []
    for name, targets in GRAPH.items():
        if name.split(".")[0] != "app":
            continue
        for target in sorted(targets):
            if target.split(".")[0] != "app" or target == "app":
                continue
            source_folder, target_folder = folder_of(name), folder_of(target)
            if target in ROOT_MODULES and name not in ROOT_MODULES:
                wrong.append(f"{name} -> {target} (the composition root)")
            elif source_folder is None or target_folder in (None, source_folder):
                continue
            elif target_folder not in ALLOWED[source_folder]:
                wrong.append(f"{name} -> {target} ({source_folder}/ may not import "
                             f"{target_folder}/)")
    assert wrong == [], "imports across the layers:\n" + "\n".join(wrong)


def test_the_bench_grpc_client_shares_no_code_with_the_server() -> None:
    # bench/grpc_h2.py drives the server under test; a framing bug in code both use would
    # hide on both sides, so nothing it imports, directly or not, is app/ code
    seen, todo = set(), ["bench.grpc_h2"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH.get(module, ()))
    assert sorted(m for m in seen if m.split(".")[0] == "app") == []
