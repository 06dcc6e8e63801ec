"""MLflow delivery through outages, against a real `mlflow server`.

In every case the server must end with each step's metrics exactly once, every param, and the plan:
down at the start and up mid-run; killed and restarted twice mid-run; never up, then
`pretrain sync-mlflow`. While a server (re)starts, the training process is paused (SIGSTOP), so that a slow
start on a loaded machine cannot let the run finish before the server is back: the outage stays mid-run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.test_pretrain_runs import TINY, run_train, shards  # noqa: F401 (fixture)

STEPS = 60


class Server:
    def __init__(self, tmp_path: Path, port: int):
        self.db, self.port, self.tmp, self.proc = f"sqlite:///{tmp_path}/server.db", port, tmp_path, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.db,
                                      "--artifacts-destination", str(self.tmp / "artifacts"), "--host", "127.0.0.1",
                                      "--port", str(self.port), "--workers", "1"], cwd=self.tmp, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        from mlflow.tracking import MlflowClient

        for _ in range(240):
            try:
                MlflowClient(self.uri).search_experiments()
                return
            except Exception:
                time.sleep(0.25)
        raise RuntimeError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)  # abrupt, as a crashed server
            self.proc.wait(timeout=30)


def metric_steps(outbox: Path) -> int:
    if not outbox.is_file():
        return 0
    return sum(1 for line in outbox.read_text().splitlines() if '"kind": "metrics"' in line)


def start_training(tmp_path, shards_dir, uri, step_delay_s: float = 0.2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PRETRAIN_STEP_DELAY_S": str(step_delay_s)}
    args = [f"data.train={shards_dir / 'train'}", "out_dir=run", f"tracking.tracking_uri={uri}",
            "tracking.experiment=outage", *TINY, f"train.steps={STEPS}", "train.checkpoint_every=1000"]
    return subprocess.Popen([sys.executable, "-m", "pretrain.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextmanager
def paused(proc: subprocess.Popen):
    """The training process stopped (SIGSTOP) for the duration, then continued."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def wait_for_steps(tmp_path: Path, n: int, proc: subprocess.Popen) -> None:
    outbox = tmp_path / "run/mlflow-offline/outbox.jsonl"
    while metric_steps(outbox) < n:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)


def assert_exactly_once(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, STEPS + 1))  # each step exactly once
    assert len(client.get_metric_history(run.info.run_id, "lr")) == STEPS
    assert {"n_params", "train_tokens", "world_size", "model.hidden", "train.steps"} <= run.data.params.keys()
    assert "plan.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.info.status == "FINISHED"
    return run


def train_through(tmp_path, shards_dir, server: Server, outage, system_metrics: bool = False) -> None:
    """Train while `outage(proc)` plays with the server; then every record must be there exactly once."""
    proc = start_training(tmp_path, shards_dir, server.uri)
    try:
        outage(proc)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        run = assert_exactly_once(server.uri)
        if system_metrics:
            assert "system/cpu_utilization_percentage" in run.data.metrics
    finally:
        proc.kill()
        server.stop()


@pytest.mark.slow
def test_server_down_at_start_and_up_mid_run(shards, tmp_path):  # noqa: F811
    server = Server(tmp_path, free_port())

    def outage(proc):
        wait_for_steps(tmp_path, 5, proc)
        with paused(proc):
            server.start()

    train_through(tmp_path, shards, server, outage, system_metrics=True)  # the monitor starts once the run exists


@pytest.mark.slow
def test_server_killed_and_restarted_twice_mid_run(shards, tmp_path):  # noqa: F811
    server = Server(tmp_path, free_port())
    server.start()

    def outage(proc):
        for steps in (10, 35):
            wait_for_steps(tmp_path, steps, proc)
            server.stop()
            wait_for_steps(tmp_path, steps + 3, proc)
            with paused(proc):
                server.start()

    train_through(tmp_path, shards, server, outage)


@pytest.mark.slow
def test_server_never_up_then_sync_mlflow_replays_the_run(shards, tmp_path):  # noqa: F811
    server = Server(tmp_path, free_port())
    proc = start_training(tmp_path, shards, server.uri, step_delay_s=0)  # no server to catch mid-run
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    server.start()
    try:
        sync = subprocess.run([sys.executable, "-m", "pretrain.train", "sync-mlflow", "run"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert sync.returncode == 0 and "delivered to run" in sync.stdout, sync.stderr[-2000:]
        again = subprocess.run([sys.executable, "-m", "pretrain.train", "sync-mlflow", "run"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
        assert "0 record(s) delivered" in again.stdout  # a second replay sends nothing
        assert_exactly_once(server.uri)
        state = json.loads((tmp_path / "run/mlflow-offline/state.json").read_text())
        assert state["delivered"] == metric_steps(tmp_path / "run/mlflow-offline/outbox.jsonl") + \
            sum(1 for line in (tmp_path / "run/mlflow-offline/outbox.jsonl").read_text().splitlines()
                if '"kind": "metrics"' not in line)
    finally:
        server.stop()
