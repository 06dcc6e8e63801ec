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
