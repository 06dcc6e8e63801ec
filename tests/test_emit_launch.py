"""`planner emit` and `launch`: configs DeepSpeed accepts, byte-identical output, real local and two-node runs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import main as planner_main
from planner.core.schema import load_config
from planner.model.shapes import shape_of
from pretrain.data.synthetic import write_markov_shards
from tests.conftest import free_port

TINY_SHAPE = ["--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "256", "--seq-len", "64"]


def emit(out: Path, *args: str) -> int:
    return planner_main(["emit", "--out", str(out), *args])


def run(cmd: list[str], cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600, **kw)


def launch(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "launch.cli", *args], cwd, env)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shards") / "train"
    write_markov_shards(path, rows=1024)
    return path


def test_emit_writes_every_file_and_twice_gives_identical_bytes(tmp_path):
    args = ["--params", "1e9", "--zero", "3", "--gpus", "16", "--micro-batch", "2"]
    assert emit(tmp_path, *args) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert emit(tmp_path, *args) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    assert set(first) == {"run.yaml", "ds_config.json", "plan.json", "PLAN.md", "launch_deepspeed.sh", "hostfile",
                          "slurm.sbatch", "submit.sh"}


@pytest.mark.parametrize("flags, launchers", [
    (["--fsdp", "full", "--gpus", "8"], {"launch_torchrun.sh"}),
    (["--fsdp", "full", "--gpus", "16"], {"launch_torchrun_multinode.sh"}),
    (["--zero", "2", "--gpus", "8"], {"launch_deepspeed.sh"}),
    (["--zero", "2", "--gpus", "16"], {"launch_deepspeed.sh", "hostfile"}),
])
def test_only_the_launchers_that_fit_the_engine_and_size_are_emitted(tmp_path, flags, launchers):
    assert emit(tmp_path, "--params", "1e9", *flags) == 0
    written = {p.name for p in tmp_path.iterdir()} - {"run.yaml", "ds_config.json", "plan.json", "PLAN.md",
                                                      "slurm.sbatch", "submit.sh"}
    assert written == launchers


def test_a_percent_sign_in_the_job_folder_is_written_literal_in_sbatchs_log_pattern(tmp_path):
    out = tmp_path / "p%jx"  # sbatch would read %j of the folder's name as the job id
    assert emit(out, "--params", "1e9") == 0
    sbatch = (out / "slurm.sbatch").read_text()
    assert f"#SBATCH --output={tmp_path.resolve()}/p%%jx/slurm-%x-%j.out" in sbatch


def test_microbatches_alone_set_the_global_batch(tmp_path):
    assert emit(tmp_path, "--model", "llama2-7b", "--gpus", "8", "--fsdp", "full", "--pp", "2",
                "--microbatches", "8") == 0
    p = load_config(tmp_path / "run.yaml").parallel
    assert (p.grad_accum, p.global_batch) == (8, 8 * 1 * 4)  # m x micro-batch x 4 data-parallel ranks


def test_sbatch_is_absolute_logs_into_the_job_folder_and_chains_a_long_plan(tmp_path):
    # LLaMA-2-7B on 64 A100s for 2T tokens: the plan is days long; 48 h jobs chain with afterany.
    assert emit(tmp_path, "--model", "llama2-7b", "--gpus", "64", "--fsdp", "full", "--tokens", "2e12",
                "--env-setup", "source /opt/venv/bin/activate") == 0
    sbatch = (tmp_path / "slurm.sbatch").read_text()
    job = str(tmp_path.resolve())
    assert f"#SBATCH --chdir={job}" in sbatch and f"#SBATCH --output={job}/slurm-%x-%j.out" in sbatch
    assert "mkdir" not in sbatch and "logs/" not in sbatch and f"--config {job}/run.yaml" in sbatch
    assert "source /opt/venv/bin/activate" in sbatch and "NCCL_ASYNC_ERROR_HANDLING=1 " not in sbatch.replace(
        "TORCH_NCCL_ASYNC_ERROR_HANDLING=1 ", "")
    plan_hours = json.loads((tmp_path / "plan.json").read_text())["wall_days"] * 24
    submit = (tmp_path / "submit.sh").read_text()
    jobs = int(submit.split("seq 2 ")[1].split(")")[0])
    assert "#SBATCH --time=48:00:00" in sbatch and jobs * 47.75 >= plan_hours * 1.1 > (jobs - 1) * 47.75
    assert "--dependency=afterany" in submit


def test_a_short_plan_gets_its_own_time_with_a_margin(tmp_path):
    assert emit(tmp_path, "--params", "1e8", "--gpus", "8", "--fsdp", "full", "--tokens", "1e9") == 0
    plan_hours = json.loads((tmp_path / "plan.json").read_text())["wall_days"] * 24
    time = next(x for x in (tmp_path / "slurm.sbatch").read_text().splitlines() if x.startswith("#SBATCH --time="))
    days, hms = time.split("=")[1].split("-")
    h, m, _ = map(int, hms.split(":"))
    assert int(days) * 24 + h + m / 60 == pytest.approx(plan_hours * 1.1 + 0.25, abs=1 / 60)
    assert "seq 2 1)" in (tmp_path / "submit.sh").read_text()  # one job


def test_emitted_run_config_loads_and_matches_the_plan(tmp_path):
    assert emit(tmp_path, "--model", "llama2-7b", "--fsdp", "hybrid", "--sharding-factor", "8", "--gpus", "64",
                "--checkpointing", "full", "--micro-batch", "2") == 0
    cfg = load_config(tmp_path / "run.yaml")
    assert shape_of(cfg.model).param_count() == 6_738_415_616
    p = cfg.parallel
    assert (p.engine, p.fsdp_mode, p.dp_shard, p.world, p.nodes) == ("fsdp", "hybrid", 8, 64, 8)
    assert cfg.parallel.micro_batch * cfg.parallel.grad_accum * 64 * 4096 == 2**22
    assert cfg.train.activation_checkpointing == "full" and cfg.plan["predicted_memory_per_gpu_bytes"] > 0


@pytest.mark.parametrize("stage, offload", [(1, "none"), (2, "optimizer"), (3, "all")])
def test_emitted_ds_config_passes_deepspeeds_own_config_class(tmp_path, monkeypatch, stage, offload):
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    assert emit(tmp_path, "--params", "7e9", "--zero", str(stage), "--offload", offload, "--gpus", "32",
                "--micro-batch", "2", "--batch-tokens", str(2**21)) == 0
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(ds_config.dist, "get_world_size", lambda *a, **k: 32)
    parsed = ds_config.DeepSpeedConfig(str(tmp_path / "ds_config.json"))
    assert parsed.train_batch_size == 2 * 32 * parsed.gradient_accumulation_steps
    assert parsed.zero_optimization_stage == stage and parsed.bfloat16_config.enabled


def test_launch_scripts_are_valid_shell_and_names_are_plain(tmp_path):
    assert emit(tmp_path, "--params", "1e9", "--gpus", "16", "--name", "run-7b_v1.2") == 0
    for name in ("launch_torchrun_multinode.sh", "slurm.sbatch", "submit.sh"):
        assert subprocess.run(["bash", "-n", str(tmp_path / name)]).returncode == 0, name
    assert "--job-name=run-7b_v1.2" in (tmp_path / "slurm.sbatch").read_text()
    assert emit(tmp_path / "other", "--params", "1e9", "--name", "it's a run") == 2  # checks.name


def test_batch_tokens_that_do_not_divide_are_refused(tmp_path):
    out = run([sys.executable, "-m", "planner.cli", "emit", "--out", str(tmp_path), "--params", "1e9",
               "--batch-tokens", "1000000"], tmp_path)
    assert out.returncode == 2 and "--batch-tokens" in out.stderr and not any(tmp_path.iterdir())


def tiny_emit(tmp_path: Path, data: Path, *extra: str) -> Path:
    out = tmp_path / "emit"
    assert emit(out, *TINY_SHAPE, "--gpus", "2", "--gpus-per-node", "2", "--micro-batch", "4", "--batch-tokens", "512",
                "--tokens", "10240", "--data", str(data), "--checkpoint-every", "10", "--eval-every", "10",
                "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--lr", "0.01", *extra) == 0
    return out / "run.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("engine", [["--zero", "2"], ["--fsdp", "full"]], ids=["deepspeed-launcher", "torchrun"])
def test_launch_local_trains_the_emitted_config(tmp_path, data, engine):
    config = tiny_emit(tmp_path, data, *engine)
    out = launch("local", str(config), "--nproc", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "preflight: plan at 2 GPU(s)" in out.stdout
    assert ("deepspeed" if engine[0] == "--zero" else "torch.distributed.run") in out.stdout
    summary = json.loads((tmp_path / "runs/run/summary.json").read_text())
    assert summary["steps"] == 20 and summary["losses"][-1][1] < summary["losses"][0][1]


@pytest.mark.slow
def test_two_nodes_on_loopback_train_together(tmp_path, data):
    config = tiny_emit(tmp_path, data, "--zero", "3")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 slots=1\n127.0.0.1 slots=1\n")
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-m", "launch.cli", "nodes", str(config), "--hostfile", str(hosts),
                               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "--nnodes=2" in outs[0][0] and "--node_rank=1" in outs[1][0]
    summary = json.loads((tmp_path / "runs/run/summary.json").read_text())
    assert summary["steps"] == 20


def test_preflight_refuses_a_job_that_will_not_fit(tmp_path, data, capsys):
    assert emit(tmp_path, "--params", "7e9", "--gpus", "8", "--data", str(data)) == 0  # DDP: 7B does not fit
    assert "note: the plan needs" in capsys.readouterr().err  # written, and said at once
    out = launch("local", str(tmp_path / "run.yaml"), "--nproc", "8", "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "will not fit" in out.stderr and "GiB per GPU needed" in out.stderr
    forced = launch("local", str(tmp_path / "run.yaml"), "--nproc", "8", "--dry-run", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "+ " in forced.stdout


@pytest.mark.parametrize("hostfile, rank, message", [
    ("node0 slots=2\nnode1 slot=2\n", 0, "line 2"),
    ("node0 slots=2\n", 3, "--node-rank"),
])
def test_bad_hostfile_or_node_rank_starts_nothing(tmp_path, data, hostfile, rank, message):
    config = tiny_emit(tmp_path, data)
    (tmp_path / "hosts").write_text(hostfile)
    out = launch("nodes", str(config), "--hostfile", str(tmp_path / "hosts"), "--node-rank", str(rank),
                 "--master-addr", "127.0.0.1", "--master-port", str(free_port()), cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "+ " not in out.stdout


def test_multinode_launch_needs_an_explicit_port_and_no_file_holds_a_fixed_one(tmp_path, data):
    config = tiny_emit(tmp_path, data)
    (tmp_path / "hosts").write_text("127.0.0.1 slots=1\n127.0.0.1 slots=1\n")
    out = launch("nodes", str(config), "--hostfile", str(tmp_path / "hosts"), "--node-rank", "0",
                 "--master-addr", "127.0.0.1", cwd=tmp_path)
    assert out.returncode == 2 and "--master-port" in out.stderr
    for script in (tmp_path / "emit").glob("*.s*"):  # every port a launcher passes comes from MASTER_PORT
        for port in re.findall(r"(?:--master_port |rdzv_endpoint=)(\S+)", script.read_text()):
            assert "MASTER_PORT" in port, port


@pytest.mark.parametrize("override, key", [("train.bogus=1", "bogus"), ("parallel.micro_batch=x", "parallel.micro_batch"),
                                           ("parallel.fsdp_mode=no-shard", "parallel.fsdp_mode")])
def test_run_config_errors_name_the_key_and_start_nothing(tmp_path, data, override, key):
    config = tiny_emit(tmp_path, data, "--fsdp", "full")
    out = launch("local", str(config), "--nproc", "2", override, cwd=tmp_path)
    assert out.returncode == 2 and key in out.stderr and "+ " not in out.stdout


def test_ds_config_that_disagrees_with_the_world_size_is_refused(tmp_path, data):
    config = tiny_emit(tmp_path, data, "--zero", "2")  # emitted for 2 ranks
    out = launch("local", str(config), "--nproc", "1", "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "parallel.global_batch" in out.stderr and "2 ranks, 1 launched" in out.stderr


def test_slurm_writes_a_script_and_submit_needs_sbatch(tmp_path, data):
    config = tiny_emit(tmp_path, data, "--fsdp", "full")
    emitted = (tmp_path / "emit/slurm.sbatch").read_bytes()
    no_slurm = tmp_path / "empty-bin"  # a PATH without sbatch, even where the test set-up installed Slurm
    no_slurm.mkdir()
    out = launch("slurm", str(config), "--nodes", "2", "--gpus-per-node", "1", "--submit", cwd=tmp_path,
                 env={"PATH": str(no_slurm)})
    script = (tmp_path / "emit/slurm-launch.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "--rdzv_backend=c10d" in script
    assert (tmp_path / "emit/submit-slurm-launch.sh").is_file()
    assert (tmp_path / "emit/slurm.sbatch").read_bytes() == emitted  # the emitted script is never rewritten
    assert out.returncode == 2 and "sbatch is not on PATH" in out.stderr


def test_slurm_out_elsewhere_submits_that_script_and_never_replaces_a_file_it_did_not_write(tmp_path, data):
    config = tiny_emit(tmp_path, data, "--fsdp", "full")
    (tmp_path / "other").mkdir()
    out = launch("slurm", str(config), "--nodes", "2", "--gpus-per-node", "1", "--out",
                 str(tmp_path / "other/job.sbatch"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "other/job.sbatch") in (tmp_path / "other/submit-job.sh").read_text()
    for target in (config, tmp_path / "emit/plan.json", tmp_path / "emit/slurm.sbatch"):
        before = target.read_bytes()
        out = launch("slurm", str(config), "--nodes", "2", "--gpus-per-node", "1", "--out", str(target), cwd=tmp_path)
        assert out.returncode == 2 and "--out" in out.stderr and target.read_bytes() == before


def test_slurm_dry_run_writes_nothing(tmp_path, data):
    config = tiny_emit(tmp_path, data, "--fsdp", "full")
    before = sorted(p.name for p in (tmp_path / "emit").iterdir())
    out = launch("slurm", str(config), "--nodes", "2", "--gpus-per-node", "1", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0 and "nothing written" in out.stdout and "#SBATCH --nodes=2" in out.stdout
    assert sorted(p.name for p in (tmp_path / "emit").iterdir()) == before


def test_launch_verify_preflight_measures_the_real_engine_at_the_launch_size(tmp_path, data):
    config = tiny_emit(tmp_path, data, "--fsdp", "full")
    out = launch("local", str(config), "--nproc", "2", "--dry-run", "--verify", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "verify at 2 GPU(s): measured peak" in out.stdout


#: Long options of sbatch(1) that our scripts may use (Slurm 22.05 man page), with their value formats.
SBATCH_DOCUMENTED = {"job-name", "chdir", "output", "error", "nodes", "ntasks-per-node", "gpus-per-node",
                     "cpus-per-task", "time", "partition", "dependency", "requeue", "signal", "parsable"}


def test_every_sbatch_directive_is_a_documented_option_with_a_valid_value(tmp_path):
    from planner.core.checks import slurm_time

    assert emit(tmp_path, "--model", "llama2-7b", "--gpus", "64", "--fsdp", "full", "--partition", "gpu") == 0
    directives = [x[len("#SBATCH --"):] for x in (tmp_path / "slurm.sbatch").read_text().splitlines()
                  if x.startswith("#SBATCH")]
    options = dict(d.split("=", 1) for d in directives)
    assert set(options) <= SBATCH_DOCUMENTED
    assert all(options[k].isdigit() for k in ("nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task"))
    slurm_time("--time", options["time"])
    assert options["chdir"].startswith("/") and options["output"].startswith(options["chdir"])
    submit = (tmp_path / "submit.sh").read_text()
    assert "sbatch --parsable" in submit and "--dependency=afterany:" in submit


#: Each kind of engine config emit writes, launched: ZeRO-1 and FSDP's shard-grad-op differ from ZeRO-2 and FSDP full
#: by one value (the stage, the sharding mode): tests/test_pretrain_runs.py trains both engines, and ZeRO-1's emitted
#: JSON passes DeepSpeed's own config class above (dropped from this list 2026-12-06 to keep the suite in budget).
ROUND_TRIP = {
    "ddp": [], "zero2": ["--zero", "2"], "zero3": ["--zero", "3"],
    "zero3-offload": ["--zero", "3", "--offload", "all"], "fsdp-full": ["--fsdp", "full"],
    "fsdp-hybrid": ["--fsdp", "hybrid", "--sharding-factor", "2"], "fsdp-tp2": ["--fsdp", "full", "--tp", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ROUND_TRIP)
def test_round_trip_emit_launch_train_matches_the_plans_batch_and_tokens(tmp_path, data, strategy):
    # planner emit -> launch preflight -> pretrain on 2 CPU processes for 3 steps
    out = tmp_path / "emit"
    assert emit(out, *TINY_SHAPE, "--gpus", "2", "--gpus-per-node", "2", "--micro-batch", "2", "--batch-tokens", "512",
                "--tokens", "1536", "--data", str(data), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                "--precision", "fp32", *ROUND_TRIP[strategy]) == 0
    cfg = load_config(out / "run.yaml")
    r = launch("local", str(out / "run.yaml"), "--nproc", "2", "tracking.enabled=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "runs/run/summary.json").read_text())
    per_step = cfg.parallel.micro_batch * cfg.parallel.grad_accum * cfg.parallel.dp * cfg.model.seq_len
    assert per_step == 512 and cfg.train.steps == 3
    assert summary["steps"] == 3 and summary["tokens_seen"] == 1536
