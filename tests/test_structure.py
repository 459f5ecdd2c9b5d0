"""brdlib's structure as the imports draw it: floors, imports only downward, no cycle, no private name crossing
modules, brdlib imports at the top of modules, short functions, explicit exports (README "Layout")."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import brdlib

PACKAGE = Path(brdlib.__file__).parent
NOTEBOOKS = PACKAGE.parent / "notebooks"

FLOORS: dict[str, int] = {
    # 0 records and config: the record types, model-spec parsing, shard parsing, literals, the typed profile
    "records": 0, "specs": 0, "config": 0,
    # 1 store: every path under data/<profile>/, atomic writes, cards, summaries, the one resolve_model; results
    "store": 1, "report": 1, "results": 1,
    # 2 resources: models, embedded weights, corpus, tasks, BIG-bench, the paper's prompts, generation engines, the
    # Table 9 tasks as an lm-evaluation-harness group
    "embedded": 2, "models": 2, "corpus": 2, "bigbench": 2, "tasks": 2, "prompts": 2, "backends": 2, "harness": 2,
    # 3 stages: the teacher, assembly, training (and its KD loss), scoring and evaluation
    "teacher": 3, "teacher_ray": 3, "assemble": 3, "packing": 3, "train": 3, "kd": 3, "scoring": 3, "evaluate": 3,
    # 4 studies: one module per study of the paper
    "blind": 4, "protocols": 4, "cross_entropy": 4, "probing": 4, "data_size": 4, "paper_tables": 4, "plan": 4,
    # 5 the commands
    "cli": 5, "runner": 5,
}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def _brdlib_imports(tree: ast.Module) -> list[tuple[ast.ImportFrom | ast.Import, str]]:
    """Every import of a brdlib module in ``tree`` (top level, in functions, under TYPE_CHECKING), with its module."""
    out: list[tuple[ast.ImportFrom | ast.Import, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brdlib."):
            out.append((node, node.module.split(".")[1]))
        elif isinstance(node, ast.ImportFrom) and node.module == "brdlib":
            out += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(node, a.name.split(".")[1]) for a in node.names if a.name.startswith("brdlib.")]
    return out


def _graph() -> dict[str, set[str]]:
    return {name: {m for _, m in _brdlib_imports(tree)} - {name} for name, tree in _modules().items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_every_module_has_a_floor_and_imports_only_downward() -> None:
    modules = set(_modules())
    assert modules == set(FLOORS), f"modules without a floor: {sorted(modules - set(FLOORS))}; " \
                                   f"floors without a module: {sorted(set(FLOORS) - modules)}"
    upward = [f"{a} (floor {FLOORS[a]}) imports {b} (floor {FLOORS[b]})"
              for a, deps in _graph().items() for b in sorted(deps) if FLOORS[b] > FLOORS[a]]
    assert upward == []


def test_no_private_name_is_imported_across_modules() -> None:
    crossing = [f"{name}:{node.lineno} takes {alias.name} from brdlib.{module}"
                for name, tree in _modules().items() for node, module in _brdlib_imports(tree)
                if isinstance(node, ast.ImportFrom) for alias in node.names if alias.name.startswith("_")]
    assert crossing == []


def test_names_are_imported_from_the_module_that_defines_them() -> None:
    """No name is taken through a module that only imported it itself (the graph would lie about who owns it)."""
    trees = _modules()
    defined = {name: _defined(tree) for name, tree in trees.items()}
    roots = [PACKAGE, PACKAGE.parent / "tests", PACKAGE.parent / "bench"]
    passed_on = []
    for path in (p for root in roots for p in sorted(root.rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brdlib."):
                module = node.module.split(".")[1]
                passed_on += [f"{path.name}:{node.lineno} takes {a.name} from brdlib.{module}"
                              for a in node.names if module in defined and a.name not in defined[module]]
    assert passed_on == []


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If | ast.Try):  # a guarded definition
            names |= _defined(ast.Module(body=[*node.body, *getattr(node, "orelse", [])], type_ignores=[]))
    return names


def test_brdlib_imports_sit_at_the_top_of_modules() -> None:
    """Only torch, transformers and other heavy libraries are imported lazily; brdlib's own graph is in plain sight
    (``if TYPE_CHECKING:`` blocks are top level too)."""
    nested = []
    for name, tree in _modules().items():
        top = {id(n) for n in tree.body}
        top |= {id(n) for stmt in tree.body if isinstance(stmt, ast.If) for n in stmt.body}
        nested += [f"{name}:{node.lineno} imports brdlib.{module} inside a function"
                   for node, module in _brdlib_imports(tree) if id(node) not in top]
    assert nested == []


def test_no_function_is_longer_than_80_lines() -> None:
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in _modules().items() for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_every_module_declares_its_exports_and_they_exist() -> None:
    for name in _modules():
        module = __import__(f"brdlib.{name}", fromlist=["__all__"])
        assert hasattr(module, "__all__"), f"brdlib.{name} has no __all__"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert missing == [], f"brdlib.{name}.__all__ names what it does not define: {missing}"
    assert sorted(brdlib.__all__) == sorted(FLOORS)


def _notebook_trees() -> list[tuple[str, ast.Module]]:
    out = []
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
                out.append((nb.name, ast.parse("\n".join(lines))))
    return out


def _notebook_imports() -> list[tuple[str, str, str]]:
    """(notebook, module, name) of every ``from brdlib.module import name`` and every ``module.name`` used after
    ``from brdlib import module``."""
    out, modules = [], {}
    for nb, tree in _notebook_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brdlib."):
                out += [(nb, node.module.split(".")[1], a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "brdlib":
                modules.update({(nb, a.asname or a.name): a.name for a in node.names})
    for nb, tree in _notebook_trees():
        out += [(nb, modules[(nb, node.value.id)], node.attr) for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and (nb, node.value.id) in modules]
    return sorted(set(out))


@pytest.mark.parametrize("notebook, module, name", _notebook_imports())
def test_what_notebooks_use_is_exported(notebook: str, module: str, name: str) -> None:
    mod = __import__(f"brdlib.{module}", fromlist=["__all__"])
    assert name in mod.__all__, f"{notebook} uses brdlib.{module}.{name}, which is not in its __all__"


def test_notebooks_import_something() -> None:
    assert len(_notebook_imports()) > 20


def _pyflakes(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_notebooks_use_no_undefined_or_unused_name(tmp_path: Path) -> None:
    """A notebook cell naming a module it never imported (``analysis.probing_tasks`` after the split) fails here,
    without executing the notebook (pyflakes' checks, through ruff, which reads notebooks)."""
    result = _pyflakes(NOTEBOOKS)
    assert result.returncode == 0, result.stdout[-3000:]
    broken = tmp_path / "broken.ipynb"
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["print(analysis.probing_tasks(cfg))\n"]}
    broken.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert "F821" in _pyflakes(broken).stdout


def test_every_python_dash_m_names_the_command_line() -> None:
    """``python -m brdlib.X`` runs X's code and exits 0 doing nothing unless X has a command line; only brdlib.cli
    has one (the runner once prepared no model through ``-m brdlib.embedded`` after the commands moved)."""
    root = PACKAGE.parent
    files = [*PACKAGE.glob("*.py"), *root.glob("tests/*.py"), *root.glob("bench/*"), *root.glob("scripts/*"),
             *root.glob("configs/**/*.yaml"), root / "README.md", root / "run_all.sh", root / ".ci" / "run"]
    pattern = re.compile(r"""-m["',\s]+brdlib\.(\w+)""")
    wrong = [f"{path.relative_to(root)}: -m brdlib.{m}" for path in files if path.is_file() and path != Path(__file__)
             for m in pattern.findall(path.read_text(errors="replace")) if m != "cli"]
    assert wrong == []
    mains = [name for name, tree in _modules().items() if any(
        isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)]
    assert mains == ["cli"]
