"""Shared test helpers: paths, ../shared/data (beside the checkout), and running the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import free_port  # noqa: F401 (one definition: tests pick ports as launch does)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (it lies beside the checkout)")
    return SHARED_DATA


def run_cli(*args: str, module: str = "planner.cli") -> subprocess.CompletedProcess:
    """Run a console entry point in a fresh interpreter, exactly as a user's shell would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)

