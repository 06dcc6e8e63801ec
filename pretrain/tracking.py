"""MLflow tracking: one run per job (rank 0), resumed with the job, resilient to a server outage.

Rank 0 creates the run (or reopens the one whose id the checkpoint carries) and logs the
flattened config as params, the plan as `plan.json`, git commit and library versions as tags,
metrics per step, and the loss-curve plot at the end. If the tracking server cannot be reached,
training goes on: metrics are appended to `<out_dir>/<fallback_dir>/metrics.jsonl` and retried
on later calls, with one warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from planner.io import atomic_write_json
from pretrain.config import RunConfig, flatten

RETRY_EVERY = 20  # steps between attempts to send buffered metrics after a failure


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "deepspeed", "mlflow", "pretrain-planner"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


class Tracker:
    """No-op on ranks other than 0 and when tracking is off."""

    def __init__(self, cfg: RunConfig, is_main: bool, run_id: str | None = None):
        self.cfg, self.active = cfg, is_main and cfg.tracking.enabled
        self.run_id, self.pending, self.failing = run_id, [], False
        self.fallback = Path(cfg.out_dir) / cfg.tracking.fallback_dir / "metrics.jsonl"
        self.warned = False
        if not self.active:
            return
        # a down server must cost seconds, not MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        self._call(self._start)

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.cfg.tracking.tracking_uri)

    def _start(self) -> None:
        import mlflow

        client = self._client()
        if self.run_id:
            client.update_run(self.run_id, status="RUNNING")
            return
        exp = client.get_experiment_by_name(self.cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.cfg.tracking.experiment)
        run = client.create_run(exp_id, run_name=self.cfg.tracking.run_name or self.cfg.name,
                                tags={"git_commit": _git_commit(), "engine": self.cfg.engine.name,
                                      **{f"version.{k}": v for k, v in _versions().items()}})
        self.run_id = run.info.run_id
        params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flatten(self.cfg).items()]
        for i in range(0, len(params), 100):
            client.log_batch(self.run_id, params=params[i: i + 100])

    def _call(self, fn, *args) -> bool:
        try:
            fn(*args)
            self.failing = False
            return True
        except Exception as exc:  # any transport or store error: keep training
            if not self.warned:
                print(f"pretrain: warning: MLflow tracking unavailable ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:160]}); metrics go to {self.fallback} and are retried",
                      file=sys.stderr, flush=True)
                self.warned = True
            self.failing = True
            return False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        self.pending.append((step, metrics))
        if self.failing and step % RETRY_EVERY:  # while failing, retry only every RETRY_EVERY steps
            self._spill(step, metrics)
            return
        if self.run_id is None and not self._call(self._start):
            self._spill(step, metrics)
            return
        if self._call(self._send_pending):
            return
        self._spill(step, metrics)

    def _send_pending(self) -> None:
        from mlflow.entities import Metric

        client = self._client()
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, s) for s, m in self.pending for k, v in m.items()]
        for i in range(0, len(batch), 500):
            client.log_batch(self.run_id, metrics=batch[i: i + 500])
        self.pending = []

    def _spill(self, step: int, metrics: dict) -> None:
        self.fallback.parent.mkdir(parents=True, exist_ok=True)
        with self.fallback.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_params(self, params: dict) -> None:
        if self.active and self.run_id:
            from mlflow.entities import Param

            self._call(lambda: self._client().log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()]))

    def log_dict(self, obj: dict, name: str) -> None:
        if self.active and self.run_id:
            self._call(lambda: self._client().log_dict(self.run_id, obj, name))

    def log_artifact(self, path: str | Path) -> None:
        if self.active and self.run_id:
            self._call(lambda: self._client().log_artifact(self.run_id, str(path)))

    def finish(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        if self.pending:
            self._call(self._send_pending)
        if self.run_id:
            self._call(lambda: self._client().set_terminated(self.run_id, status))
        atomic_write_json(Path(self.cfg.out_dir) / "mlflow_run.json",
                          {"run_id": self.run_id, "tracking_uri": self.cfg.tracking.tracking_uri,
                           "pending_metrics": len(self.pending)})
