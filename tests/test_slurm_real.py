"""The emitted sbatch scripts against a real Slurm: Debian's slurm-wlm, a local `slurmctld` on free ports.

`make test` installs slurm-wlm where apt can (README, "Tests"). The controller runs with
`auth/none` and four CLOUD nodes of 8 GPUs (schedulable without a slurmd), a `gpu` partition
capped at 2 days and `EnforcePartLimits=ALL`, so `sbatch --test-only` parses every directive the
way a cluster would and refuses what the partition cannot run.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.cli import main as planner_main
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.skipif(not (shutil.which("slurmctld") and shutil.which("sbatch")),
                                reason="Slurm is not installed (make test installs Debian's slurm-wlm where apt can)")

VENV_ACTIVATE = Path(sys.executable).parent / "activate"
BASE_CONF = """SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={slurmd_port}
AuthType=auth/none
CredType=cred/none
SlurmUser={user}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
"""
#: four CLOUD nodes of 8 GPUs (placed, never started) and a 2-day partition that enforces its limits
CONF = BASE_CONF + """ClusterName=plannertest
GresTypes=gpu
EnforcePartLimits=ALL
SuspendProgram=/bin/true
ResumeProgram=/bin/true
SuspendTime=600
NodeName=gpu[0-3] NodeAddr=127.0.0.1 CPUs=128 RealMemory=512000 Gres=gpu:8 State=CLOUD
PartitionName=gpu Nodes=gpu[0-3] Default=YES MaxTime=2-00:00:00 State=UP
"""
#: this machine as one node whose slurmd runs the jobs
NODE_CONF = BASE_CONF + """ClusterName=curatetest
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=cpu Nodes={node} Default=YES MaxTime=01:00:00 State=UP
"""


def _start_cluster(root: Path, conf: str, node: str | None = None):
    """slurmctld (and, given a node name, a slurmd that runs jobs) on free ports; yields SLURM_CONF's env."""
    import getpass

    for sub in ("state", "spool"):
        (root / sub).mkdir()
    (root / "slurm.conf").write_text(conf.format(host=socket.gethostname(), port=free_port(), slurmd_port=free_port(),
                                                 user=getpass.getuser(), root=root, node=node, cpus=os.cpu_count()))
    (root / "gres.conf").write_text("Name=gpu Count=8\n")
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    daemons = [["slurmctld", "-D", "-i"]] + ([["slurmd", "-D", "-N", node]] if node else [])
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for cmd in daemons]
    try:
        for _ in range(150):
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            if r.returncode == 0 and (not node or r.stdout.strip() == "idle"):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"slurm did not start: {(root / 'slurmctld.log').read_text()[-2000:]}")
        yield env
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict:
    """A controller with four CLOUD GPU nodes: `sbatch --test-only` parses and places jobs, nothing runs."""
    yield from _start_cluster(tmp_path_factory.mktemp("slurm"), CONF)


@pytest.fixture(scope="module")
def slurm_node(tmp_path_factory) -> dict:
    """A one-node cluster that runs jobs: slurmctld and a slurmd (as root) for this machine's cores."""
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as root here")
    yield from _start_cluster(tmp_path_factory.mktemp("slurmd"), NODE_CONF, node=f"curate{os.getpid()}")


def sbatch_test_only(script: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["sbatch", "--test-only", str(script)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flags, nodes", [
    (["--gpus", "16", "--fsdp", "full"], "gpu[0-1]"),
    (["--gpus", "8", "--zero", "3"], "gpu0"),
    (["--gpus", "32", "--fsdp", "hybrid", "--sharding-factor", "8", "--tp", "2"], "gpu[0-3]"),
])
def test_slurm_accepts_the_emitted_script_as_submitted(flags, nodes, slurm, tmp_path):
    assert planner_main(["emit", "--params", "1.3e9", *flags, "--partition", "gpu", "--out", str(tmp_path)]) == 0
    r = sbatch_test_only(tmp_path / "slurm.sbatch", slurm)
    assert r.returncode == 0, r.stderr
    assert "to start at" in r.stderr and f"on nodes {nodes} in partition gpu" in r.stderr


def test_a_plan_longer_than_the_partition_limit_fits_it_as_a_chain(slurm, tmp_path):
    # LLaMA-7B on 200B tokens and 32 GPUs (4 nodes of 8): about 3 weeks, against a 2-day partition
    assert planner_main(["emit", "--model", "llama-7b", "--tokens", "2e11", "--gpus", "32", "--fsdp", "full",
                         "--partition", "gpu", "--max-time", "2-00:00:00", "--nodes", "4", "--out", str(tmp_path)]) == 0
    script = tmp_path / "slurm.sbatch"
    assert "#SBATCH --time=2-00:00:00" in script.read_text()
    assert sbatch_test_only(script, slurm).returncode == 0
    chain = subprocess.run(["bash", str(tmp_path / "submit.sh")], env=slurm, capture_output=True, text=True, timeout=120)
    assert chain.returncode == 0, chain.stderr
    ids = [line.split()[1] for line in chain.stdout.splitlines() if line.startswith("submitted")]
    assert len(ids) > 5
    shown = subprocess.run(["scontrol", "show", "job", ids[1]], env=slurm, capture_output=True, text=True).stdout
    assert f"Dependency=afterany:{ids[0]}" in shown
    subprocess.run(["scancel", *ids], env=slurm, capture_output=True)


def test_slurm_refuses_what_the_partition_cannot_run(slurm, tmp_path):
    # the real parser can fail: more time than the partition allows, or a partition that does not exist
    assert planner_main(["emit", "--params", "1.3e9", "--gpus", "16", "--fsdp", "full", "--partition", "gpu",
                         "--time", "3-00:00:00", "--out", str(tmp_path)]) == 0
    assert sbatch_test_only(tmp_path / "slurm.sbatch", slurm).returncode != 0
    assert planner_main(["emit", "--params", "1.3e9", "--gpus", "16", "--fsdp", "full", "--partition", "cpu",
                         "--out", str(tmp_path / "b")]) == 0
    assert "Invalid partition" in sbatch_test_only(tmp_path / "b/slurm.sbatch", slurm).stderr


@pytest.mark.slow
def test_curation_on_a_real_slurm_gives_the_local_executors_output(slurm_node, tmp_path):
    from tests.test_curate_executor import CONFIG, curate, kept

    local = tmp_path / "local"
    assert curate(local, 1, 1).returncode == 0
    out = tmp_path / "slurm"
    cmd = [sys.executable, "-m", "pretrain.data.pipeline", str(CONFIG), "curate", f"out_dir={out}",
           "curate.chunk_bytes=65536", "curate.slurm.time=00:20:00", f"curate.slurm.venv_activate={VENV_ACTIVATE}",
           "--executor", "slurm", "--tasks", "4", "--workers", "2"]
    r = subprocess.run(cmd, env=slurm_node, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "curation submitted to slurm" in r.stdout, r.stderr[-3000:]
    early = subprocess.run(cmd, env=slurm_node, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert early.returncode == 2 and "still queued or running" in early.stderr  # no second submission
    report = out / "curation_report.json"
    deadline, idle_since = time.time() + 600, None
    while not report.is_file() and time.time() < deadline:
        queued = subprocess.run(["squeue", "-h"], env=slurm_node, capture_output=True, text=True).stdout.strip()
        idle_since = None if queued else idle_since or time.time()
        if idle_since and time.time() - idle_since > 15:
            break  # nothing queued or running, and no report: a job failed
        time.sleep(1)
    assert report.is_file(), _slurm_logs(out)
    assert kept(out) == kept(local)
    assert (out / "exclusions.jsonl").read_bytes() == (local / "exclusions.jsonl").read_bytes()
    a, b = (json.loads((o / "curation_report.json").read_text()) for o in (local, out))
    assert a["steps"] == b["steps"] and a["domains"] == b["domains"]
    script = (out / "work/logs/signatures/launch_script.slurm").read_text()
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --array=0-3%2" in script
    again = subprocess.run(cmd, env=slurm_node, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "submitted" not in again.stdout and "# Curation report" in again.stdout


def _slurm_logs(out: Path) -> str:
    logs = sorted((out / "work/logs").rglob("*.out")) + sorted((out / "work/logs").rglob("task_*.log"))
    return "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in logs[-6:]) or "no job logs"
