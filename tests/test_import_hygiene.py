"""The planner never imports torch (it must answer instantly, DESIGN.md)."""

import subprocess
import sys


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


GROUND_FLOOR = {"planner.errors", "planner.io", "planner.units", "planner.checks", "planner.parallel"}


def _planner_imports(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("planner"):
            names |= {node.module} if node.module != "planner" else {f"planner.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("planner")}
    return names


def test_the_ground_floor_imports_nothing_above_it():
    from pathlib import Path

    for module in GROUND_FLOOR:
        path = Path(__file__).parents[1] / (module.replace(".", "/") + ".py")
        assert _planner_imports(path) <= GROUND_FLOOR, module


def test_engines_reach_the_planner_only_through_its_ground_floor():
    # the parallel plan, errors and atomic io; never emit, plan or the CLI
    from pathlib import Path

    for path in (Path(__file__).parents[1] / "pretrain/engines").glob("*.py"):
        assert _planner_imports(path) <= GROUND_FLOOR, path.name
