"""The package layout README.md describes: no import circles between modules, lower layers that
import nothing from training, launching or reporting, and methods/ and tasks/ that use only the
public pieces of the backbone. Read from the source with `ast` (imports inside functions count)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOWER = ("vpd_bench.rollout", "vpd_bench.models", "vpd_bench.losses", "vpd_bench.sandbox")
UPPER = ("vpd_bench.training", "vpd_bench.launch", "vpd_bench.report", "vpd_bench.cli")
PUBLIC_TO_METHODS = ("vpd_bench.method", "vpd_bench.losses", "vpd_bench.errors", "vpd_bench.registry")
PUBLIC_TO_TASKS = ("vpd_bench.errors", "vpd_bench.registry", "vpd_bench.sandbox")


def _modules(folder: Path, package: str) -> dict[str, Path]:
    out = {}
    for p in folder.rglob("*.py"):
        rel = p.relative_to(folder).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join((package, *parts)) if parts else package] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an import statement in the file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules(ROOT / "vpd_bench", "vpd_bench")
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imported in _imports(name, path):
            while imported and imported not in mods:          # `from pkg import name` names an attribute
                imported = imported.rsplit(".", 1)[0] if "." in imported else ""
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_backbone():
    assert _cycles(_graph()) == []


def test_lower_layers_import_nothing_from_training_launching_or_reporting():
    bad = {m: sorted(d for d in deps if _within(d, UPPER))
           for m, deps in _graph().items() if _within(m, LOWER)}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_public_check_sees_a_private_import(tmp_path):
    (tmp_path / "m.py").write_text("from vpd_bench.training.loop import Trainer\nfrom vpd_bench import losses\n")
    used = _imports("pkg.m", tmp_path / "m.py")
    assert "vpd_bench.training.loop" in used and not _within("vpd_bench.training.loop", PUBLIC_TO_METHODS)


def test_methods_and_tasks_use_only_the_public_backbone():
    for folder, package, public in (("methods", "vpd_bench.methods", PUBLIC_TO_METHODS),
                                    ("tasks", "vpd_bench.tasks", PUBLIC_TO_TASKS)):
        for name, path in _modules(ROOT / folder, package).items():
            used = {m for m in _imports(name, path) if m == "vpd_bench" or m.startswith("vpd_bench.")}
            # the top package itself (`from vpd_bench import losses`, `vpd_bench.__file__`) is public
            private = sorted(m for m in used if m != "vpd_bench" and not _within(m, (package,) + public))
            assert private == [], f"{path.relative_to(ROOT)} imports {private}"
