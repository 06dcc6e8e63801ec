"""Hardening: files get the umask's mode, checkpoints are pruned, emitted scripts carry no
injected command."""

import stat
import subprocess
from pathlib import Path

import pytest

from planner.cli import main as planner_main
from pretrain.checkpoint import Checkpointer
from pretrain.distributed import DistInfo


def test_atomic_writes_get_the_umask_mode_not_mkstemps_private_one(tmp_path, monkeypatch):
    import planner.core.io

    # the umask is read once at import; patch what was read rather than reloading the module,
    # which would make a second SpecialFileError class that other modules' `except` miss
    monkeypatch.setattr(planner.core.io, "_UMASK", 0o022)
    path = planner.core.io.atomic_write_text(tmp_path / "run.yaml", "a: 1\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


class _NullEngine:
    def save(self, path: Path) -> None:
        (Path(path) / "model.bin").write_bytes(b"x")


def test_checkpoints_are_pruned_to_the_last_k_and_latest_survives(tmp_path):
    import torch

    info = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    ckpt = Checkpointer(tmp_path, info, keep_last=2)
    (tmp_path / "step_00000099.tmp").mkdir(parents=True)  # a save in progress elsewhere is not ours to delete
    for step in (1, 2, 3, 4):
        ckpt.save(step, _NullEngine(), {}, {})
    kept = sorted(p.name for p in tmp_path.glob("step_*"))
    assert kept == ["step_00000003", "step_00000004"]
    assert (tmp_path / "latest").read_text().strip() == "step_00000004"


INJECTIONS = ["a\ntouch {m}", "$(touch {m})", "`touch {m}`", "a; touch {m}", "a\r\ntouch {m}"]


@pytest.mark.parametrize("flag", ["--name", "--partition", "--time", "--data", "--experiment"])
@pytest.mark.parametrize("payload", INJECTIONS)
def test_injected_values_never_reach_an_emitted_script(tmp_path, capsys, flag, payload):
    marker = tmp_path / "pwned"
    out = tmp_path / "emit"
    code = planner_main(["emit", "--out", str(out), "--params", "1e9", "--gpus", "16", "--zero", "2",
                         flag, payload.format(m=marker)])
    if code == 0:  # accepted (a path or experiment may hold `$(...)` as text): it must stay inert text
        for script in out.glob("*.s*"):
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
            stub = tmp_path / "bin"
            stub.mkdir(exist_ok=True)
            for tool in ("srun", "torchrun", "scontrol", "deepspeed", "python", "python3"):
                (stub / tool).write_text("#!/bin/sh\nexit 0\n")
                (stub / tool).chmod(0o755)
            env = {"PATH": f"{stub}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1",
                   "SLURM_JOB_ID": "1", "HOME": str(tmp_path)}
            subprocess.run(["bash", str(script)], cwd=out, env=env, capture_output=True, timeout=60)
        assert not marker.exists()
    else:
        assert code == 2 and not out.exists()
        err = capsys.readouterr().err
        assert err.startswith("planner: error: " + flag) and len(err.strip().splitlines()) == 1
