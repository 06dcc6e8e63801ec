"""MLflow as teams organise runs: a ladder's runs nested under one parent run, each run's data as dataset
inputs (source and digest), system metrics sampled into training runs."""

import hashlib
import json
import time

from planner.core.schema import DataConfig, RunConfig, TrackingConfig
from pretrain.tracking import PARENT_TAG, Tracker


def _shards(folder, seq_len=32):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"seq_len": seq_len, "vocab_size": 512, "shards": []}))
    return folder


def _tracker(tmp_path, name, **tracking):
    cfg = RunConfig(name=name, out_dir=str(tmp_path / name),
                    data=DataConfig(train=str(_shards(tmp_path / name / "train")),
                                    eval=str(_shards(tmp_path / name / "eval", 16))),
                    tracking=TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="sweep",
                                            **tracking))
    return Tracker(cfg, is_main=True)


def _client(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def test_runs_with_a_parent_run_are_nested_under_one_run_of_that_name(tmp_path):
    a = _tracker(tmp_path, "a", parent_run="ladder", system_metrics=False)
    b = _tracker(tmp_path, "b", parent_run="ladder", system_metrics=False)
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("sweep").experiment_id
    parents = client.search_runs([exp], filter_string=f"tags.`{PARENT_TAG}` = 'true'")
    assert [p.info.run_name for p in parents] == ["ladder"] and parents[0].info.status == "FINISHED"
    for t in (a, b):
        assert client.get_run(t.run_id).data.tags["mlflow.parentRunId"] == parents[0].info.run_id


def test_a_run_logs_its_shard_folders_as_datasets_named_with_the_manifests_digest(tmp_path):
    t = _tracker(tmp_path, "a", system_metrics=False)
    inputs = {i.tags[0].value: i.dataset for i in _client(tmp_path).get_run(t.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    for context, split in (("training", "train"), ("evaluation", "eval")):
        manifest = tmp_path / "a" / split / "manifest.json"
        assert inputs[context].name == split
        assert inputs[context].digest == hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
        assert json.loads(inputs[context].source)["uri"] == (tmp_path / "a" / split).as_uri()
        assert json.loads(inputs[context].profile)["seq_len"] == (32 if split == "train" else 16)


def test_system_metrics_are_sampled_into_the_run_while_it_trains(tmp_path):
    t = _tracker(tmp_path, "a", system_metrics_every_s=0.5)
    time.sleep(2.5)
    t.finish()
    metrics = _client(tmp_path).get_run(t.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= metrics.keys()


def test_tables_of_runs_read_from_mlflow_leave_the_grouping_run_out(tmp_path):
    from planner.laws.rundata import load_table

    runs = [_tracker(tmp_path, name, parent_run="ladder", system_metrics=False) for name in ("a", "b")]
    table = load_table("mlflow:sweep", f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(table["run_id"]) == sorted(t.run_id for t in runs)
