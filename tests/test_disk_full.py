"""A full disk (a small tmpfs the test mounts) during a checkpoint save and during curation:
one line and exit 2, the previous checkpoint intact, and the resumed run finishes.

Mounting needs root (CI and the dev machines run as root); elsewhere these tests skip.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.test_pretrain_runs import TINY, run_train, shards  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(point)
        return point

    mounted: list[Path] = []
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _checkpoint_bytes(shards_dir: Path, tmp_path: Path) -> int:
    out = tmp_path / "probe"
    r = run_train(tmp_path, [f"data.train={shards_dir / 'train'}", f"out_dir={out}", "tracking.enabled=false",
                             *TINY, "train.steps=10"])
    assert r.returncode == 0, r.stderr[-2000:]
    return sum(f.stat().st_size for f in (out / "checkpoints" / "step_00000010").rglob("*") if f.is_file())


@pytest.mark.slow
def test_checkpoint_save_on_a_full_disk_fails_cleanly_and_the_run_resumes(shards, tmp_path, small_disk):  # noqa: F811
    size = _checkpoint_bytes(shards, tmp_path)
    disk = small_disk(f"{int(size * 1.6) // 1024}k")  # room for one checkpoint, not two
    out = disk / "run"
    common = [f"data.train={shards / 'train'}", f"out_dir={out}", "tracking.enabled=false", *TINY,
              "train.steps=30", "train.keep_last_checkpoints=1"]
    r = run_train(tmp_path, common)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_00000010" and (out / "checkpoints" / latest / "meta.json").is_file()
    # make room (as a user would: here the disk grows), then resume: the stale partial save is cleared
    subprocess.run(["mount", "-o", f"remount,size={size * 4 // 1024}k", str(disk)], check=True)
    r = run_train(tmp_path, common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 30


def test_curation_on_a_full_disk_is_one_line_and_exit_2(tmp_path, small_disk):
    disk = small_disk("64k")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "pretrain.data.pipeline", str(REPO / "configs/data-sample.yaml"),
                        "curate", f"out_dir={disk / 'out'}", "--quiet",
                        f"sources=[{{path: {REPO}/data/sample/finance.jsonl, domain: finance}}, "
                        f"{{path: {REPO}/data/sample/general.jsonl, domain: general}}]"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    assert len(r.stderr.strip().splitlines()) == 1 and "No space left on device" in r.stderr, r.stderr[-2000:]
    assert str(disk) in r.stderr  # the message names the file


@pytest.mark.parametrize("argv", [
    ["planner.cli", "emit", "--out", "{d}/plan", "--params", "1e9"],
    ["planner.cli", "fit", "curve", "{csv}", "--x-col", "d", "--out", "{d}/law.json"],
    ["pretrain.data.synthetic", "{d}/syn", "--rows", "8"],
    ["launch.cli", "slurm", "{run}", "--nodes", "1", "--out", "{d}/job.sbatch", "--force"],
])
def test_a_read_only_disk_is_one_line_naming_the_path(tmp_path, small_disk, argv):
    disk = small_disk("1m", read_only=True)
    csv = tmp_path / "runs.csv"
    csv.write_text("n,d,loss\n1,10,4.0\n2,20,3.6\n3,40,3.3\n4,80,3.1\n5,160,3.0\n")
    run = tmp_path / "run.yaml"
    run.write_text(f"name: ok\ndata: {{train: {tmp_path}}}\n")
    (tmp_path / "manifest.json").write_text("{}")
    args = [a.format(d=disk, csv=csv, run=run) for a in argv]
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "Read-only file system" in r.stderr and str(disk) in r.stderr
