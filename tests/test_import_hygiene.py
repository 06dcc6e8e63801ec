"""How the code is layered: the planner never imports torch on the estimate path, no module imports
itself back through others, and each floor imports only the floors below it (DESIGN's picture)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("planner", "pretrain", "launch")

#: The planner's floors, lowest first: a module may import its own floor and the ones below.
PLANNER_FLOORS = (("core",), ("model",), ("memory", "compute"), ("plan",), ("emit",), ("laws",), ("report",),
                  ("cli",))


def test_importing_every_planner_module_does_not_import_torch():
    code = ("import sys, importlib, pkgutil, planner\n"
            "for m in pkgutil.walk_packages(planner.__path__, 'planner.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [m for m in ('torch', 'deepspeed', 'mlflow', 'datasets') if m in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_planner_estimate_imports_neither_numpy_nor_scipy():
    # `planner estimate` is plain arithmetic; numpy/scipy load only for fits and optimisation.
    code = ("import sys\nfrom planner.cli import main\nmain(['estimate', '--params', '7e9', '--json'])\n"
            "print([m for m in ('numpy', 'scipy', 'torch') if m in sys.modules], file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_curation_word_statistics_load_spacy_without_torch_and_torch_still_imports_after():
    # spaCy's thinc would import torch (two thirds of its import time), in every curation worker
    code = ("import sys\nfrom pretrain.data.steps.words import words_of\n"
            "words = words_of(\"The data isn't ready, e.g. U.S. filings.\").words\n"
            "print('spacy' in sys.modules, 'torch' in sys.modules, len(words))\n"
            "import torch\nprint(torch.ones(2).sum().item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "False", "10", "2.0"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module `path` imports, at the top or inside a function (lazy imports count)."""
    tree, found = ast.parse(path.read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {name: imports_of(path, modules) for name, path in modules.items()}
    for name in graph:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back_through_others():
    assert find_cycle(import_graph()) is None


def floor_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "planner" or len(parts) < 2:
        return None
    return next((i for i, names in enumerate(PLANNER_FLOORS) if parts[1] in names), None)


def test_every_planner_module_lives_on_a_floor():
    unplaced = [m for m in import_graph() if m.startswith("planner.") and floor_of(m) is None]
    assert unplaced == []


def test_each_planner_floor_imports_only_the_floors_below_it():
    wrong = [(m, dep) for m, deps in import_graph().items() if floor_of(m) is not None
             for dep in deps if floor_of(dep) is not None and floor_of(dep) > floor_of(m)]
    assert wrong == []


def test_only_the_planner_cli_imports_the_trainer_or_the_launchers():
    wrong = [(m, dep) for m, deps in import_graph().items()
             if m.startswith("planner.") and not m.startswith("planner.cli")
             for dep in deps if dep.split(".")[0] in ("pretrain", "launch")]
    assert wrong == []


def test_the_trainer_never_imports_the_launchers_or_the_planner_cli():
    wrong = [(m, dep) for m, deps in import_graph().items() if m.startswith("pretrain")
             for dep in deps if dep.startswith(("launch", "planner.cli"))]
    assert wrong == []


def test_engines_reach_the_planner_only_through_its_ground_floor_and_the_deepspeed_json():
    wrong = [(m, dep) for m, deps in import_graph().items() if m.startswith("pretrain.engines")
             for dep in deps if dep.startswith("planner") and not dep.startswith("planner.core")
             and dep != "planner.emit.deepspeed"]
    assert wrong == []
