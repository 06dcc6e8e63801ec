"""The end-to-end demo, reduced (`--sample --quick`): a ladder on the sample corpus, the held-out run predicted
before it trains, a truthful report, everything under the demo folder, resume, and the lock. The default demo on
installed text (5 minutes) is run by hand (README); here its design and data config are checked."""

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.laws.fit import NO_FLOOR_NOTE


def test_the_real_text_demos_ladder_spans_8x_in_size_and_every_run_starts_past_the_plateau():
    from launch.demo import INSTALLED
    from planner.laws import ladder

    flops, target, batch = INSTALLED.budgets["full"]
    lad = ladder.design(**INSTALLED.design, ladder_flops=flops, target_flops=target, batch_tokens=batch)
    sizes = sorted({p.params for p in lad.points if not p.held_out})
    held = next(p for p in lad.points if p.held_out)
    assert len(sizes) == 4 and sizes[-1] / sizes[0] >= 8 and held.params > sizes[-1]
    assert min(p.steps for p in lad.points) >= 370  # measured: fewer steps sit on the unigram plateau
    counts = {p.tokens for p in lad.points if not p.held_out}
    assert len(counts) == 3  # every size on the same token counts (tokens_exponent 0)


def test_the_real_text_demos_sources_are_installed_text_written_into_the_demo_and_the_shipped_finance(tmp_path):
    from launch.demo import INSTALLED, REPO, _source_path
    from pretrain.data.config import load_pipeline_config

    cfg = load_pipeline_config(REPO / INSTALLED.data_config, [f"out_dir={tmp_path}"])
    paths = {s.domain: [] for s in cfg.sources}
    for s in cfg.sources:
        paths[s.domain].append(_source_path(s.path, tmp_path / "data"))
    assert paths["finance"] == [REPO / "data/sample/finance.jsonl"]
    assert {p.parent for p in paths["docs"]} == {tmp_path / "data/installed"}
    assert {k for k, _ in INSTALLED.installed_bytes} == {p.stem for p in paths["docs"]}
    assert cfg.tokenizer.sentinels == 0 and cfg.curate.c4 is False


def run_demo(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "launch.cli", "demo", "--out", str(out), "--sample", "--quick", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=out.parent)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = run_demo(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def _client(demo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{demo}/mlflow.db")


def _runs(demo: Path, experiment: str, parents: bool = False):
    """The experiment's runs: the training runs, or with `parents` the ladder's parent run too."""
    from pretrain.tracking import PARENT_TAG

    client = _client(demo)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if parents or not r.data.tags.get(PARENT_TAG)]


@pytest.mark.slow
def test_every_ladder_run_is_in_mlflow_with_measured_against_predicted_memory(demo):
    runs = _runs(demo, "demo-ladder")
    assert len(runs) == 10  # 3 sizes x 3 token multiples + the held-out run
    for run in runs:
        assert {"loss", "eval_loss", "tokens_per_s", "flops_seen", "model_state_bytes_measured",
                "model_state_bytes_predicted"} <= run.data.metrics.keys()
        assert run.data.metrics["model_state_bytes_ratio"] == pytest.approx(1.0, rel=0.05)


@pytest.mark.slow
def test_every_training_run_is_nested_under_the_ladder_run_with_its_datasets_and_system_metrics(demo):
    runs = _runs(demo, "demo-ladder")
    trained = {r.info.run_id for r in runs}
    parents = [r for r in _runs(demo, "demo-ladder", parents=True) if r.info.run_id not in trained]
    assert [p.info.run_name for p in parents] == ["ladder"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}  # the held-out run too
    manifest = {split: demo / "data" / "shards" / split / "manifest.json" for split in ("train", "eval")}
    for run in runs:
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"training", "evaluation"}
        for context, split in (("training", "train"), ("evaluation", "eval")):
            assert inputs[context].name == split and json.loads(inputs[context].source)["uri"].endswith(split)
            assert inputs[context].digest == hashlib.sha256(manifest[split].read_bytes()).hexdigest()[:16]
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= run.data.metrics.keys()


@pytest.mark.slow
def test_cpu_runs_log_no_mfu_and_no_predicted_tokens_per_second(demo):
    for run in _runs(demo, "demo-ladder"):
        assert not {"mfu", "tokens_per_s_predicted"} & run.data.metrics.keys()


@pytest.mark.slow
def test_the_held_out_run_logs_the_prediction_made_before_it_trained(demo):
    prediction = json.loads((demo / "prediction.json").read_text())
    held = [r for r in _runs(demo, "demo-ladder") if r.info.run_name.endswith("-heldout")]
    assert len(held) == 1 and held[0].data.params["parallel.engine"] == "deepspeed"
    assert held[0].data.metrics["loss_predicted"] == pytest.approx(prediction["loss_predicted"])
    assert (demo / "prediction.json").stat().st_mtime < (demo / "points" / held[0].info.run_name / "run/summary.json").stat().st_mtime


@pytest.mark.slow
def test_the_sample_corpus_ladder_is_monotone_in_size(demo):
    report = json.loads((demo / "report.json").read_text())
    assert report["monotone"]["ok"], report["monotone"]["orders"]


@pytest.mark.slow
def test_the_report_run_logs_the_law_the_error_and_the_decision_as_params_and_metrics(demo):
    report = json.loads((demo / "report.json").read_text())
    (run,) = _runs(demo, "demo-report")
    m, p = run.data.metrics, run.data.params
    assert m["held_out_error"] == pytest.approx(report["error"]) and m["law_E"] == pytest.approx(report["law"]["E"])
    assert p["usable"] == "False" and p["converged"] == "True"  # the quick demo's law is refused (below)
    assert "replan_params" not in m
    assert {a.path for a in _client(demo).list_artifacts(run.info.run_id, "report")} >= {"report/REPORT.md", "report/nd.png"}


@pytest.mark.slow
def test_the_quick_demos_law_has_no_floor_and_the_report_refuses_to_re_plan_from_its_held_out_miss(demo):
    # Measured (2026-12-06, --sample --quick): on the templated sample corpus the ladder's loss keeps falling as a
    # pure power law, so E is not identified and the nested law with E = 0 is fitted (it says so); it predicts the
    # held-out run at 2.006 (band 1.75-2.26) against 1.715 measured, +17%, past the +/-5% the re-plan asks, so no
    # re-plan is made and the report says why. A change to the ladder, the trainer or the fit that changes this
    # outcome must show here.
    report = json.loads((demo / "report.json").read_text())
    text = (demo / "report/REPORT.md").read_text()
    assert report["converged"] is True and report["law"]["E"] == 0.0 and report["message"] == NO_FLOOR_NOTE
    assert report["usable"] is False and "replan" not in report
    assert report["refusal"].startswith("the law missed the held-out run by +") and report["error"] > 0.05
    assert "Not used to re-plan: " + report["refusal"] in text and "Re-plan at" not in text
    assert f"Note: {NO_FLOOR_NOTE}" in text


@pytest.mark.slow
def test_the_demos_store_holds_its_two_experiments_and_no_other(demo):
    assert sorted(e.name for e in _client(demo).search_experiments()) == ["demo-ladder", "demo-report"]


@pytest.mark.slow
def test_all_mlflow_artifacts_live_under_the_demo_folder(demo):
    client = _client(demo)
    for name in ("demo-ladder", "demo-report"):
        location = client.get_experiment_by_name(name).artifact_location
        assert location.startswith((demo / "mlartifacts").as_uri()), location
    assert not (demo.parent / "mlruns").exists() and not list(demo.glob("points/*/mlruns"))


@pytest.mark.slow
def test_the_plots_are_written(demo):
    for name in ("REPORT.md", "loss_curves.png", "memory_throughput.png", "nd.png"):
        assert (demo / "report" / name).stat().st_size > 1000, name


@pytest.mark.slow
def test_rerunning_the_demo_trains_nothing_again(demo):
    logs = {p: p.stat().st_mtime_ns for p in demo.glob("points/*/train.log")}
    result = run_demo(demo)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in demo.glob("points/*/train.log")} == logs
    assert "already curated" in result.stdout and "made earlier" in result.stdout
    assert len(_runs(demo, "demo-report")) == 1  # the report run is replaced, not duplicated


def test_a_second_demo_in_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    with (out / ".demo.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("12345")
        lock.flush()
        result = run_demo(out)
    assert result.returncode == 2 and "another demo is running" in result.stderr and "12345" in result.stderr
    assert not (out / "data").exists()
