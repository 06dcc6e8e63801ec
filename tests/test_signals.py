"""Ctrl-C and SIGTERM: one line, exit 130 / 143 (128 + the signal, as shells report), and the work resumable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain.data.synthetic import write_markov_shards

COMMON = ["tracking.enabled=false", "train.steps=400", "optim.lr=0.01", "optim.warmup_steps=2",
          "parallel.micro_batch=4", "train.checkpoint_every=2", "train.eval_every=1000"]


def start_training(tmp_path: Path, out: Path) -> subprocess.Popen:
    if not (tmp_path / "train/manifest.json").is_file():
        write_markov_shards(tmp_path / "train", rows=256)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "pretrain.train", f"data.train={tmp_path / 'train'}",
                             f"out_dir={out}", *COMMON], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_a_checkpoint(out: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not (out / "checkpoints/latest").is_file():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.2)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["sigint", "sigterm"])
def test_a_signal_stops_training_in_one_line_and_the_run_resumes(tmp_path, sig, code, word):
    out = tmp_path / "run"
    proc = start_training(tmp_path, out)
    wait_for_a_checkpoint(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip() and "INFO" not in line and "WARNING" not in line]
    assert lines[-1].startswith(f"pretrain: {word}") and "Traceback" not in err, err[-2000:]
    latest = (out / "checkpoints/latest").read_text().strip()
    meta = json.loads((out / "checkpoints" / latest / "meta.json").read_text())
    assert meta["step"] >= 2  # a complete checkpoint to resume from
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    rerun = subprocess.run([sys.executable, "-m", "pretrain.train", f"data.train={tmp_path / 'train'}", f"out_dir={out}",
                            *COMMON, f"train.steps={meta['step'] + 2}"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    done = json.loads((out / "summary.json").read_text())
    assert [step for step, _ in done["losses"]][-3:] == [meta["step"], meta["step"] + 1, meta["step"] + 2]


def sample_config_in(folder: Path) -> Path:
    """The shipped sample config, written in `folder`, curating into `folder`/out."""
    from tests.test_untrusted_data_config import config_with

    folder.mkdir()
    return config_with(folder)


def curate(config: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "pretrain.data.pipeline", str(config), "curate", "--tasks", "4",
                             "--workers", "2", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def kept(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted((out / "curated").rglob("*.jsonl"))}


def test_ctrl_c_during_curation_with_workers_is_one_line_and_the_rerun_gives_the_uninterrupted_output(tmp_path):
    config = sample_config_in(tmp_path / "interrupted")
    out = config.parent / "out"
    proc = curate(config, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.rglob("completions/*")):  # a task has finished: there is work to keep
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group, workers too
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["pretrain-data: interrupted (SIGINT); finished work is kept, a rerun resumes"]
    rerun = curate(config)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and err == "", err[-2000:]  # --quiet: datatrove's logs stay off stderr
    assert curate(sample_config_in(tmp_path / "whole")).wait(timeout=300) == 0
    assert kept(out) == kept(tmp_path / "whole/out") and kept(out)
