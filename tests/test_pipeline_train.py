"""Pipeline parallelism from plan to run, on 4 gloo processes: `planner emit` -> `launch local` (preflight) ->
`torch.distributed.pipelining` stages, each FSDP2 (+ TP) inside.

Every layout trains 10 steps on the batches one plain process sees (16 sequences a step) and its losses
are that process's within bf16 tolerance; each pipeline rank's model states are the planner's to the
byte and its first micro-batch's saved activations within 5%; a crash resumes exactly.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_emit_launch import emit, launch
from tests.test_pretrain_runs import run_train

SHAPE = ["--layers", "8", "--hidden", "64", "--heads", "4", "--vocab", "256", "--seq-len", "64"]
#: 10 steps of 16 sequences x 64 tokens; a checkpoint every 4 steps (the resume test crashes after step 9)
PLAN = ["--gpus", "4", "--gpus-per-node", "4", "--fsdp", "full", "--global-batch", "16", "--tokens", "10240",
        "--lr", "0.003", "--checkpoint-every", "4"]
INTERLEAVED = ["--pp-schedule", "interleaved-1f1b", "--pp-virtual", "2"]
#: Every layout (PP 2 x FSDP 2, PP 2 x TP 2, PP 4) and both schedules. (PP 2 x FSDP 2 interleaved, PP 2 x TP 2
#: 1F1B, PP 4 1F1B and PP 4 GPipe also pass, 2026-12-04; left out to keep the suite under its budget.)
LAYOUTS = {
    "pp2-fsdp2-1f1b": ["--pp", "2", "--micro-batch", "2"],
    "pp2-tp2-interleaved": ["--pp", "2", "--tp", "2", "--micro-batch", "4", *INTERLEAVED],
    "pp4-interleaved": ["--pp", "4", "--micro-batch", "4", *INTERLEAVED],
}
TRACKED = "pp4-interleaved"  # the layout whose run is tracked in MLflow (4 stages)


def summary(out_dir: Path) -> dict:
    return json.loads((out_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from pretrain.data.synthetic import write_markov_shards

    path = tmp_path_factory.mktemp("pp-shards") / "train"
    write_markov_shards(path, rows=1024)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """Each layout emitted, launched and trained once (module-wide: every test reads the same runs)."""
    done: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def get(layout: str) -> tuple[Path, subprocess.CompletedProcess]:
        if layout not in done:
            job = tmp_path_factory.mktemp(layout)
            assert emit(job / "emit", *SHAPE, *PLAN, *LAYOUTS[layout], "--data", str(data),
                        "--tracking-uri", f"sqlite:///{job}/mlflow.db", "--experiment", "pp") == 0
            tracking = [] if layout == TRACKED else ["tracking.enabled=false"]
            done[layout] = job, launch("local", str(job / "emit/run.yaml"), "--nproc", "4", *tracking, cwd=job)
        return done[layout]

    return get


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, runs):
    """The same model, schedule and 16 sequences a step on one plain process (micro-batch 4 x 4)."""
    job, _ = runs("pp2-fsdp2-1f1b")
    tmp = tmp_path_factory.mktemp("one")
    r = run_train(tmp, ["--config", str(job / "emit/run.yaml"), f"out_dir={tmp / 'one'}", "tracking.enabled=false",
                        "parallel.engine=single", "parallel.pp=1", "parallel.world=1", "parallel.nodes=1",
                        "parallel.micro_batch=4", "parallel.grad_accum=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    return summary(tmp / "one")


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pipeline_layout_round_trips_and_trains_the_losses_of_one_process(layout, runs, one_process):
    job, r = runs(layout)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "preflight: plan at 4 GPU(s)" in r.stdout
    s = summary(job / "runs/run")
    assert s["steps"] == 10 and s["tokens_seen"] == 10 * 16 * 64  # the plan's tokens
    for (step, pp_loss), (_, one_loss) in zip(s["losses"], one_process["losses"], strict=True):
        assert pp_loss == pytest.approx(one_loss, rel=2e-3), step  # bf16 tolerance; measured within 2e-4


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_pipeline_rank_holds_the_planners_model_states_and_activations(layout, runs):
    job, r = runs(layout)
    assert r.returncode == 0, r.stderr[-3000:]
    stages = summary(job / "runs/run")["stages"]
    assert [s["pp_rank"] for s in stages] == list(range(len(stages)))
    for stage in stages:
        measured, predicted = stage["model_state_bytes_measured"], stage["model_state_bytes_predicted"]
        assert measured == predicted, stage["pp_rank"]  # to the byte, line by line
        assert stage["activation_bytes_predicted"] == pytest.approx(stage["activation_bytes_measured"], rel=0.05)


@pytest.mark.slow
def test_every_stage_is_logged_in_mlflow_beside_its_prediction(runs):
    from mlflow.tracking import MlflowClient

    job, r = runs(TRACKED)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{job}/mlflow.db")
    metrics = client.search_runs([client.get_experiment_by_name("pp").experiment_id])[0].data.metrics
    for rank in range(4):
        for kind in ("model_state_bytes", "activation_bytes"):
            assert metrics[f"pp{rank}_{kind}_measured"] > 0 and metrics[f"pp{rank}_{kind}_predicted"] > 0


@pytest.mark.slow
def test_resume_after_a_crash_under_a_pipeline_reproduces_the_uninterrupted_losses(runs, tmp_path):
    layout = "pp2-tp2-interleaved"
    job, straight = runs(layout)
    assert straight.returncode == 0, straight.stderr[-3000:]
    config = str(job / "emit/run.yaml")
    out = f"out_dir={tmp_path / 'b'}"
    crashed = launch("local", config, "--nproc", "4", "tracking.enabled=false", out, cwd=tmp_path,
                     env={"PRETRAIN_FAIL_AFTER_STEP": "9"})
    assert crashed.returncode != 0 and (tmp_path / "b/checkpoints/latest").read_text().strip() == "step_00000008"
    resumed = launch("local", config, "--nproc", "4", "tracking.enabled=false", out, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary(tmp_path / "b")["losses"] == summary(job / "runs/run")["losses"]


@pytest.mark.parametrize("flags, message", [
    (["--zero", "2"], "--pp: DeepSpeed's pipeline engine needs its own model API"),
    (["--fsdp", "full", "--pp-schedule", "zero-bubble", "--pp-virtual", "2"], "--pp-schedule: zero-bubble defers"),
])
def test_emit_refuses_a_pipeline_the_trainer_cannot_run_in_one_line(flags, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "planner.cli", "emit", "--out", str(tmp_path / "e"), *SHAPE, "--gpus", "4",
                        "--pp", "2", *flags], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "e").exists()


def test_global_batch_in_sequences_sets_the_micro_batches_of_the_pipeline(tmp_path):
    from planner.core.schema import load_config

    assert emit(tmp_path, *SHAPE, "--gpus", "4", "--fsdp", "full", "--pp", "2", "--micro-batch", "2",
                "--global-batch", "32") == 0
    p = load_config(tmp_path / "run.yaml").parallel
    assert (p.pp, p.dp, p.micro_batch, p.grad_accum, p.global_batch) == (2, 2, 2, 8, 32)


def test_global_batch_and_batch_tokens_together_are_refused(tmp_path):
    assert emit(tmp_path / "e", *SHAPE, "--global-batch", "32", "--batch-tokens", "2048") == 2
    assert not (tmp_path / "e").exists()
