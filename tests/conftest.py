"""Shared test helpers: paths, the published data the repository ships, and running the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import free_port  # noqa: F401 (one definition: tests pick ports as launch does)

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_DATA = REPO / "data" / "published"


@pytest.fixture
def published_data() -> Path:
    """Measurements read off published papers, shipped with their provenance (`data/published/README.md`)."""
    return PUBLISHED_DATA


def run_cli(*args: str, module: str = "planner.cli") -> subprocess.CompletedProcess:
    """Run a console entry point in a fresh interpreter, exactly as a user's shell would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def pack_sample(out: Path, seq_len: int) -> Path:
    """The shipped finance + general sample curated into `out`, its tokenizer trained (the sample config's 2,048
    tokens) and packed in rows of `seq_len` + 1 tokens: real shards for the tests that need them."""
    from pretrain.data.config import load_pipeline_config
    from pretrain.data.executors import curate
    from pretrain.data.mix import pack
    from pretrain.data.tokenizer import train_tokenizer

    cfg = load_pipeline_config(REPO / "configs/data-sample.yaml", [f"out_dir={out}", f"mix.seq_len={seq_len}"])
    cfg.sources = [type(s)(**{**s.__dict__, "path": str(REPO / s.path)}) for s in cfg.sources]
    curate(cfg, tasks=1, workers=1, quiet=True)
    train_tokenizer(cfg)
    pack(cfg)
    return out


#: The longest test files, longest first (serial seconds on the 2-core machine, 2026-12-04: 320, 214,
#: 178, 172, 138, 103, 75, 68, 45; test_moe_train ~200 and test_mlflow_ui ~45 added 2026-12-06, test_objective_runs
#: ~150 on 2026-12-06, test_objective_parallel ~90 on 2026-12-06). `make test` hands whole files to two workers in
#: collection order (`--dist loadfile --no-loadscope-reorder`); starting with the longest keeps one worker from
#: finishing a long file alone at the end. The rest keep pytest's order after them.
LONGEST_FIRST = ("test_pretrain_runs.py", "test_pipeline_train.py", "test_moe_train.py", "test_objective_runs.py",
                 "test_emit_launch.py",
                 "test_mlflow_outage.py", "test_objective_parallel.py", "test_demo.py", "test_ladder.py",
                 "test_curate_executor.py",
                 "test_slurm_real.py", "test_verify.py", "test_mlflow_ui.py", "test_cli_optimal_fit.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
