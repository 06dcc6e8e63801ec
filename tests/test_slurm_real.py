"""The emitted sbatch scripts against a real Slurm: Debian's slurm-wlm, a local `slurmctld` on free ports.

`make test` installs slurm-wlm where apt can (README, "Tests"). The controller runs with
`auth/none` and four CLOUD nodes of 8 GPUs (schedulable without a slurmd), a `gpu` partition
capped at 2 days and `EnforcePartLimits=ALL`, so `sbatch --test-only` parses every directive the
way a cluster would and refuses what the partition cannot run.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from planner.cli import main as planner_main
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(not (shutil.which("slurmctld") and shutil.which("sbatch")),
                                reason="Slurm is not installed (make test installs Debian's slurm-wlm where apt can)")

CONF = """ClusterName=plannertest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={slurmd_port}
AuthType=auth/none
CredType=cred/none
SlurmUser={user}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmctldLogFile={root}/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
EnforcePartLimits=ALL
SuspendProgram=/bin/true
ResumeProgram=/bin/true
SuspendTime=600
NodeName=gpu[0-3] NodeAddr=127.0.0.1 CPUs=128 RealMemory=512000 Gres=gpu:8 State=CLOUD
PartitionName=gpu Nodes=gpu[0-3] Default=YES MaxTime=2-00:00:00 State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    import getpass

    (root / "slurm.conf").write_text(CONF.format(host=socket.gethostname(), port=free_port(), slurmd_port=free_port(),
                                                 user=getpass.getuser(), root=root))
    (root / "gres.conf").write_text("Name=gpu Count=8\n")
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    ctld = subprocess.Popen(["slurmctld", "-D", "-i"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        for _ in range(100):
            if subprocess.run(["sinfo", "-h"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"slurmctld did not start: {(root / 'slurmctld.log').read_text()[-2000:]}")
        yield env
    finally:
        ctld.terminate()
        ctld.wait(timeout=30)


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
