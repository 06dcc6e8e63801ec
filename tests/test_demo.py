"""The end-to-end demo, reduced (3 sizes x 3 small budgets): every artifact, resume, and the lock."""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_demo(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "launch.cli", "demo", "--out", str(out), "--quick", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=1200)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_every_run_is_in_mlflow_with_metrics_plan_and_predicted_vs_measured(demo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{demo}/mlflow.db")
    exp = client.get_experiment_by_name("demo-sweep")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 9
    for run in runs:
        assert {"loss", "eval_loss", "tokens_per_s", "flops_seen", "model_state_bytes_measured",
                "model_state_bytes_predicted"} <= run.data.metrics.keys()
        assert run.data.metrics["model_state_bytes_ratio"] == pytest.approx(1.0, rel=0.05)
        assert "plan.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_the_fitted_law_loads_and_drives_planner_optimal(demo):
    from planner.optimal import optimal_for_budget

    law = json.loads((demo / "fits/law.json").read_text())
    assert law["kind"] == "nd" and law["n_points"] == 9
    plan = optimal_for_budget("flops", 1e21, law_name=str(demo / "fits/law.json"))
    assert plan["law"] == "fit-nd:mlflow:demo-sweep" and plan["params"] > 0
    replan = json.loads((demo / "fits/replan.json").read_text())
    assert len(replan["plans"]) == 2


@pytest.mark.slow
def test_the_report_and_its_plots_are_written_and_logged(demo):
    from mlflow.tracking import MlflowClient

    for name in ("REPORT.md", "loss_curves.png", "memory_throughput.png", "curve.png", "nd.png"):
        assert (demo / "report" / name).stat().st_size > 1000, name
    assert "Re-plan" in (demo / "report/REPORT.md").read_text()
    client = MlflowClient(f"sqlite:///{demo}/mlflow.db")
    exp = client.get_experiment_by_name("demo-report")
    report_run = client.search_runs([exp.experiment_id])[0]
    assert {a.path for a in client.list_artifacts(report_run.info.run_id, "report")} >= {"report/REPORT.md"}


@pytest.mark.slow
def test_rerunning_the_demo_trains_nothing_again(demo):
    logs = {p: p.stat().st_mtime_ns for p in demo.glob("runs/*/train.log")}
    result = run_demo(demo)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in demo.glob("runs/*/train.log")} == logs
    assert "already curated" in result.stdout


def test_a_second_demo_in_the_same_folder_is_refused(tmp_path):
    with (tmp_path / ".demo.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("12345")
        lock.flush()
        result = run_demo(tmp_path)
    assert result.returncode == 2 and "another demo is running" in result.stderr and "12345" in result.stderr
    assert not (tmp_path / "data").exists()
