"""The package's shape: floors by pipeline stage, no import upward, no import circle, light settings.

Every import counts, a function's own included (a lazy import is still a dependency); only `if TYPE_CHECKING:`
imports, which never run, are left out.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "boomerang_lab"
FLOORS = ("store", "data", "models", "config", "distill", "family", "evaluate", "report", "study")
"""Lowest first; a module may import its own floor and the ones below it. `boomerang_lab/__init__.py` (the public
API) stands above them all."""


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def floor(module: str) -> int | None:
    """The floor of `boomerang_lab.<floor>...` (None for the top-level public API)."""
    parts = module.split(".")
    return None if len(parts) == 1 else FLOORS.index(parts[1])


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skip


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "boomerang_lab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "boomerang_lab":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from .pkg import submodule` imports the submodule
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} ({FLOORS[floor(a)]}) imports {b} ({FLOORS[floor(b)]})"
        for a, targets in edges.items()
        for b in targets
        if floor(a) is not None and floor(b) > floor(a)
    )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_floor():
    assert {floor(m) for m in modules()} - {None} <= set(range(len(FLOORS)))
    assert {name.split(".")[1] for name in modules() if "." in name} == set(FLOORS)


def test_no_module_imports_a_higher_floor():
    assert upward(graph()) == []


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_checks_see_what_they_must(tmp_path):
    """The checker itself: a function's lazy import is read, an upward import and a two-module circle are found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..family.members import Family\n")
    found = imports("boomerang_lab.distill.probe", probe, modules())
    assert found == {"boomerang_lab.family.members"}
    edges = {"boomerang_lab.distill.probe": found, "boomerang_lab.family.members": {"boomerang_lab.distill.probe"}}
    assert upward(edges) == ["boomerang_lab.distill.probe (distill) imports boomerang_lab.family.members (family)"]
    assert cycles(edges) == [["boomerang_lab.distill.probe", "boomerang_lab.family.members"]]


HEAVY = ("accelerate", "datasets", "transformers.trainer", "torch")


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_reading_a_profile_imports_no_training_stack():
    code = (
        "import sys\n"
        "from boomerang_lab.config import profiles\n"
        "profiles.get('quick'); profiles.get('paper', distill={'max_steps': 3}); profiles.field_rows()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert run(code) == "[]"


def test_the_public_api_and_the_order_registry_need_no_side_effect_imports():
    """The names `from boomerang_lab import ...` gives (imported on first use), and every built-in order in the
    registry as soon as the registry's own module is imported."""
    code = (
        "from boomerang_lab.family.members import ORDERS\n"
        "print(sorted(ORDERS))\n"
        "from boomerang_lab import ADAPTERS, Family, LayerPlan, Order, curve_quality, explore, get_adapter, "
        "init_student, load_model, register_order\n"
        "import boomerang_lab\n"
        "assert all(getattr(boomerang_lab, n) is not None for n in boomerang_lab.__all__)\n"
    )
    assert run(code) == "['first', 'klpatch', 'last', 'local', 'optimal']"


def test_benchmark_scripts_import_only_what_the_package_has():
    """Every `from boomerang_lab... import name` in benchmarks/, a function's own included, names a module that exists
    and a name it defines (a moved module, as text_data.py into data.py, breaks a study only when it is run)."""
    import importlib

    broken = []
    for script in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("boomerang_lab"):
                try:
                    module = importlib.import_module(node.module)
                except ModuleNotFoundError:
                    broken.append(f"{script.name}:{node.lineno} {node.module}")
                    continue
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ModuleNotFoundError:
                            broken.append(f"{script.name}:{node.lineno} {node.module}.{alias.name}")
    assert broken == []
