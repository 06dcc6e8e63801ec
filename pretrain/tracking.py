"""MLflow tracking: one run per job (rank 0), resumed with the job, exactly once through any outage.

Everything the run reports (params, tags, the plan, metrics, artifacts, the final status) first goes
into an on-disk outbox, `<out_dir>/<fallback_dir>/outbox.jsonl` (appended and fsynced), and is then
delivered to the tracking store in order. After each delivered call the outbox's `state.json`
(atomic) moves its `delivered` mark past what that call carried, so:

- a server that is down at the start, or dies mid-run, costs nothing: records wait in the outbox and
  go out on a later attempt (every `RETRY_EVERY` steps while failing), with one warning;
- nothing is sent twice: a record is re-sent only if the process died between the store accepting it
  and the mark moving, and then with the same timestamp, which MLflow's store ignores as a duplicate;
- a crash during an outage loses nothing, and `pretrain sync-mlflow OUT_DIR` replays what a run
  could not deliver (a server that never came up, or a job that ended first).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import SpecialFileError, atomic_write_json, read_json
from planner.core.schema import PARENT_RUN_TAG, RunConfig, flatten
from planner.core.tracking_store import open_store, quiet_mlflow

RETRY_EVERY = 20  # steps between delivery attempts while the store is failing
METRICS_PER_CALL = 1000  # MLflow's log_batch limit
PARAMS_PER_CALL = 100


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


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store live beside it (`<db folder>/mlartifacts`), not in the current folder
    (MLflow's default, `./mlruns`, is wherever the first run happened to start)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None  # a server or a file store chooses its own
    return (Path(tracking_uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()


def experiment_id(client, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created (with its artifacts beside a SQLite store) if it is new."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_location(tracking_uri))


#: What each kind of outbox record holds (written by `Tracker`, read back by `Deliverer`).
RECORD_FIELDS = {"metrics": {"values": dict, "step": int, "ts": int}, "params": {"values": dict},
                 "tags": {"values": dict}, "dict": {"obj": dict, "name": str}, "artifact": {"path": str},
                 "inputs": {"datasets": list}, "status": {"status": str}, "reopen": {}}
PARENT_TAG = PARENT_RUN_TAG  # marks a parent run (`tracking.parent_run`), so a child finds it by name


def _record(record, where: str) -> dict:
    """One journal line, typed: a known kind with its fields, metric values numbers."""
    if not isinstance(record, dict) or record.get("kind") not in RECORD_FIELDS:
        kind = record.get("kind") if isinstance(record, dict) else record
        raise PlannerError(f"{where}: {kind!r} is not an outbox record (kinds: {', '.join(RECORD_FIELDS)})")
    for key, type_ in RECORD_FIELDS[record["kind"]].items():
        if not isinstance(record.get(key), type_) or isinstance(record.get(key), bool):
            raise PlannerError(f"{where}: {record['kind']}.{key} must be a {type_.__name__}")
    if record["kind"] == "metrics" and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in record["values"].values()):
        raise PlannerError(f"{where}: metrics.values must all be numbers")
    return record


def _state(path: Path, records: int) -> dict:
    """state.json, typed: how many records went out (0 to the journal's length), the run's identity."""
    try:
        state = read_json(path, 1 << 20)  # regular file, bounded
    except SpecialFileError as exc:
        raise PlannerError(f"{path}: {exc.strerror} (the tracking outbox)") from None
    if not isinstance(state, dict):
        raise PlannerError(f"{path}: holds a {type(state).__name__}, not an object")
    delivered = state.get("delivered", 0)
    if isinstance(delivered, bool) or not isinstance(delivered, int) or not 0 <= delivered <= records:
        raise PlannerError(f"{path}: delivered {delivered!r} must be a whole number from 0 to the {records} "
                           "records in the outbox")
    for key in ("run_id", "experiment", "run_name", "parent_run"):
        if state.get(key) is not None and not isinstance(state[key], str):
            raise PlannerError(f"{path}: {key} {state[key]!r} must be a string")
    return state


class Outbox:
    """An append-only journal of tracking records and the mark of how many were delivered."""

    def __init__(self, folder: Path, root: Path):
        """`root`: the run's out_dir; an artifact record names a file inside it (a tampered journal could
        otherwise send any file this user can read to the store)."""
        self.folder, self.root = folder, root.resolve()
        self.journal, self.state_file = folder / "outbox.jsonl", folder / "state.json"
        if self.journal.exists() and not self.journal.is_file():  # appended to: a FIFO would block
            raise PlannerError(f"{self.journal}: is not a regular file (the tracking outbox)")
        self.records: list[dict] = []
        if self.journal.is_file():
            for n, line in enumerate(self.journal.read_text(errors="replace").splitlines(), 1):
                try:
                    record = json.loads(line)
                except ValueError:  # a line torn by a crash mid-append
                    continue
                except RecursionError:
                    raise PlannerError(f"{self.journal}: line {n}: nested too deeply to be an outbox record") from None
                record = _record(record, f"{self.journal}: line {n}")
                if record["kind"] == "artifact":
                    self.artifact_path(record, f"{self.journal}: line {n}")
                self.records.append(record)
        self.state = _state(self.state_file, len(self.records)) if self.state_file.exists() else {"delivered": 0}

    def append(self, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def artifact_path(self, record: dict, where: str = "outbox") -> Path:
        """The file an artifact record names (relative to the run's folder, or absolute inside it)."""
        path = (self.root / record["path"]).resolve()
        if not path.is_relative_to(self.root):
            raise PlannerError(f"{where}: artifact {record['path']!r} is outside the run's folder {self.root}")
        return path

    def pending(self) -> list[dict]:
        return self.records[self.state["delivered"]:]

    def save_state(self, **changes) -> None:
        self.state.update(changes)
        atomic_write_json(self.state_file, self.state)


class Deliverer:
    """Sends an outbox's pending records to an MLflow store, moving the delivered mark after each call."""

    def __init__(self, outbox: Outbox, tracking_uri: str):
        self.outbox, self.tracking_uri = outbox, tracking_uri

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def ensure_run(self) -> str:
        state = self.outbox.state
        if state.get("run_id"):
            return state["run_id"]
        client = self._client()
        exp_id = experiment_id(client, state["experiment"], self.tracking_uri)
        tags = {"mlflow.parentRunId": parent_run(client, exp_id, state["parent_run"])} if state.get("parent_run") else {}
        run = client.create_run(exp_id, run_name=state["run_name"], tags=tags)
        self.outbox.save_state(run_id=run.info.run_id)
        return run.info.run_id

    def deliver(self) -> None:
        """Raises whatever the store raises; what went out before that stays marked delivered."""
        from mlflow.entities import Metric, Param, RunTag

        run_id = self.ensure_run()
        client = self._client()
        pending, done = self.outbox.pending(), self.outbox.state["delivered"]
        i = 0
        while i < len(pending):
            rec = pending[i]
            kind = rec["kind"]
            if kind == "metrics":  # consecutive metric records go in one call, up to MLflow's limit
                batch, j = [], i
                while j < len(pending) and pending[j]["kind"] == "metrics" and \
                        len(batch) + len(pending[j]["values"]) <= METRICS_PER_CALL:
                    r = pending[j]
                    batch += [Metric(k, v, r["ts"], r["step"]) for k, v in r["values"].items()]
                    j += 1
                j = max(j, i + 1)
                if batch:
                    client.log_batch(run_id, metrics=batch)
            else:
                j = i + 1
                if kind == "params":
                    items = [Param(k, str(v)[:6000]) for k, v in rec["values"].items()]
                    for start in range(0, len(items), PARAMS_PER_CALL):
                        client.log_batch(run_id, params=items[start: start + PARAMS_PER_CALL])
                elif kind == "tags":
                    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in rec["values"].items()])
                elif kind == "dict":
                    client.log_dict(run_id, rec["obj"], rec["name"])
                elif kind == "artifact":
                    path = self.outbox.artifact_path(rec)
                    if path.is_file():
                        client.log_artifact(run_id, str(path))
                elif kind == "inputs":
                    client.log_inputs(run_id, datasets=[_dataset_input(d) for d in rec["datasets"]])
                elif kind == "status":
                    client.set_terminated(run_id, rec["status"])
                elif kind == "reopen":
                    client.update_run(run_id, status="RUNNING")
            done += j - i
            self.outbox.save_state(delivered=done)
            i = j


def parent_run(client, exp_id: str, name: str) -> str:
    """The id of the experiment's parent run `name` (tagged PARENT_TAG), created the first time a child asks."""
    for run in client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = 'true'"):
        if run.info.run_name == name:
            return run.info.run_id
    parent = client.create_run(exp_id, run_name=name, tags={PARENT_TAG: "true"}).info.run_id
    client.set_terminated(parent)  # a grouping run: nothing runs in it
    return parent


def dataset_record(context: str, folder: str) -> dict | None:
    """A packed shard folder as an MLflow dataset: named by its folder, its digest the SHA-256 of its manifest
    (which names every shard with its rows and the tokenizer's hash), its source the folder."""
    import hashlib

    from pretrain.data.shards import MANIFEST

    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return None
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    info = json.loads(manifest.read_text())
    profile = {k: info.get(k) for k in ("seq_len", "vocab_size", "tokenizer_sha256", "tokens") if k in info}
    return {"name": Path(folder).resolve().name, "digest": digest[:16], "source": Path(folder).resolve().as_uri(),
            "context": context, "profile": json.dumps(profile)}


def _dataset_input(d: dict):
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(d["name"], d["digest"], "local", json.dumps({"uri": d["source"]}), profile=d.get("profile"))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", d["context"])])


class Tracker:
    """No-op on ranks other than 0 and when tracking is off."""

    def __init__(self, cfg: RunConfig, is_main: bool, run_id: str | None = None):
        self.cfg, self.active = cfg, is_main and cfg.tracking.enabled
        self.failing, self.warned, self.run_id, self.monitor = False, False, run_id, None
        if not self.active:
            return
        # a down server must cost seconds, not MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        quiet_mlflow()
        self.outbox = Outbox(Path(cfg.out_dir) / cfg.tracking.fallback_dir, Path(cfg.out_dir))
        self.deliverer = Deliverer(self.outbox, cfg.tracking.tracking_uri)
        resumed = bool(self.outbox.records)
        if not resumed:  # a new job: the run's identity and what it is
            self.outbox.save_state(delivered=0, run_id=run_id, experiment=cfg.tracking.experiment,
                                   run_name=cfg.tracking.run_name or cfg.name,
                                   tracking_uri=cfg.tracking.tracking_uri, parent_run=cfg.tracking.parent_run)
            if run_id is None:
                self.outbox.append({"kind": "tags", "values": {"git_commit": _git_commit(), "engine": cfg.parallel.engine,
                                                               **{f"version.{k}": v for k, v in _versions().items()}}})
                self.outbox.append({"kind": "params", "values": {k: str(v) for k, v in flatten(cfg).items()}})
                datasets = [d for d in (dataset_record("training", cfg.data.train),
                                        dataset_record("evaluation", cfg.data.eval) if cfg.data.eval else None) if d]
                if datasets:
                    self.outbox.append({"kind": "inputs", "datasets": datasets})
        else:
            self.outbox.append({"kind": "reopen"})
        self.resumed, self.monitor_pending = resumed, cfg.tracking.system_metrics
        self.flush()  # starts the system-metrics monitor once the run exists in the store (`_start_monitor`)

    def _system_metrics(self, resumed: bool):
        """MLflow's system-metrics monitor on the run (CPU, memory, disk, network; GPUs where there are):
        sampled in a thread straight to the store, so it needs the run to exist there (not while the store is
        down: the training's own records wait in the outbox, these are not kept)."""
        t = self.cfg.tracking
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=t.system_metrics_every_s,
                                           tracking_uri=t.tracking_uri, resume_logging=resumed)
            monitor.start()
            return monitor
        except Exception as exc:  # a missing psutil or a store that went away: training goes on
            print(f"pretrain: warning: no system metrics ({type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
            return None

    def flush(self) -> bool:
        if not self.active:
            return True
        try:
            self.deliverer.deliver()
        except Exception as exc:  # any transport or store error: keep training, keep the records
            if not self.warned:
                print(f"pretrain: warning: MLflow tracking unavailable ({type(exc).__name__}: "
                      f"{(str(exc).splitlines() or [''])[0][:160]}); records wait in {self.outbox.journal} and are "
                      "retried (or replay them with `pretrain sync-mlflow`)", file=sys.stderr, flush=True)
                self.warned = True
            self.failing = True
            return False
        self.failing = False
        self.run_id = self.outbox.state.get("run_id")
        self._start_monitor()
        return True

    def _start_monitor(self) -> None:
        """The monitor needs the run in the store: when the first delivery fails (a server down, a SQLite store
        locked by a neighbouring run), it starts at the first one that succeeds rather than never."""
        if self.monitor_pending and self.run_id:
            self.monitor_pending = False
            self.monitor = self._system_metrics(self.resumed)

    def _record(self, record: dict, step: int | None = None) -> None:
        if not self.active:
            return
        self.outbox.append(record)
        if self.failing and step is not None and step % RETRY_EVERY:
            return  # while failing, try again only every RETRY_EVERY steps
        self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        self._record({"kind": "metrics", "step": step, "ts": int(time.time() * 1000), "values": values}, step)

    def log_params(self, params: dict) -> None:
        self._record({"kind": "params", "values": {k: str(v) for k, v in params.items()}})

    def log_dict(self, obj: dict, name: str) -> None:
        self._record({"kind": "dict", "obj": obj, "name": name})

    def log_artifact(self, path: str | Path) -> None:
        if not self.active:
            return
        # relative to the run's folder: a moved run folder still syncs, and nothing outside it is ever sent
        self._record({"kind": "artifact", "path": str(Path(path).resolve().relative_to(self.outbox.root))})

    def finish(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.finish()
                # and one last sample: MLflow's monitor publishes only after a whole sampling interval, so a run
                # shorter than that (a demo's ladder runs take 1-2 s) would otherwise end with no system metrics
                self.monitor.collect_metrics()
                self.monitor.publish_metrics(self.monitor.aggregate_metrics())
                self.monitor.mlflow_logger.flush()
        self._record({"kind": "status", "status": status})
        atomic_write_json(Path(self.cfg.out_dir) / "mlflow_run.json",
                          {"run_id": self.run_id, "tracking_uri": self.cfg.tracking.tracking_uri,
                           "pending_records": len(self.outbox.pending())})


def sync(out_dir: str | Path, tracking_uri: str | None = None) -> tuple[str, int]:
    """Deliver what a run's outbox still holds (`pretrain sync-mlflow`); returns (run id, records sent)."""
    from planner.core.errors import PlannerError

    out = Path(out_dir)
    folders = [p.parent for p in out.glob("*/outbox.jsonl")]
    if not folders:
        raise PlannerError(f"sync-mlflow: {out} holds no MLflow outbox (<out_dir>/mlflow-offline/outbox.jsonl)")
    outbox = Outbox(folders[0], out)
    before = len(outbox.pending())
    uri = tracking_uri or outbox.state.get("tracking_uri")
    if uri != outbox.state.get("tracking_uri") and outbox.state.get("run_id"):
        outbox.save_state(run_id=None, delivered=0, tracking_uri=uri)  # another store: a new run there, all of it
        before = len(outbox.pending())
    if not uri:
        raise PlannerError(f"sync-mlflow: {out}'s outbox names no store; give --tracking-uri")
    with open_store(uri, must_exist=False):  # a store to sync into may be new
        Deliverer(outbox, uri).deliver()
    return outbox.state["run_id"], before
