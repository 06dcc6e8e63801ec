"""Tables of runs for `planner fit`: CSV, JSON, or an MLflow experiment, with named columns.

An MLflow source is written `mlflow:EXPERIMENT` (with `--tracking-uri`, default the SQLite file
`mlflow.db` in the working directory, as `pretrain` writes it). Its table is MLflow's own
`search_runs` frame, so columns are named as there: `params.n_params`, `metrics.loss`, ...;
for loss curves, `metric_history` reads a metric's full history per run.
"""

from __future__ import annotations

import io
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import SpecialFileError, read_input
from planner.core.schema import PARENT_RUN_TAG
from planner.core.tracking_store import open_store

MLFLOW_PREFIX = "mlflow:"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: A table of runs or a loss curve: one row per run or per logged step; 256 MiB is millions of rows.
MAX_DATA_BYTES = 256 << 20


def load_table(source: str, tracking_uri: str | None = None):
    """A pandas DataFrame of runs from a CSV/JSON file or `mlflow:EXPERIMENT`."""
    import pandas as pd

    if source.startswith(MLFLOW_PREFIX):
        return _mlflow_runs(source[len(MLFLOW_PREFIX):], tracking_uri)
    path = Path(source)
    if not path.exists():
        raise PlannerError(f"DATA: {source} is not a file (give a .csv, a .json, or mlflow:EXPERIMENT)")
    try:  # read_input: a FIFO, device or folder is refused unread (never hung on), and so is a huge file
        data = io.BytesIO(read_input(path, max_bytes=MAX_DATA_BYTES))
    except SpecialFileError as exc:
        raise PlannerError(f"DATA: {source} {exc.strerror} (give a .csv, a .json, or mlflow:EXPERIMENT)") from None
    try:
        if path.suffix.lower() in (".json", ".jsonl"):
            table = pd.read_json(data, lines=path.suffix.lower() == ".jsonl")
        else:
            table = pd.read_csv(data)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise PlannerError(f"DATA: cannot parse {source}: {str(exc).splitlines()[0]}") from None
    if len(table) == 0:
        raise PlannerError(f"DATA: {source} has no rows (only a header?); give one row per run")
    return table


def column(table, name: str | None, flag: str):
    """The named column as floats; a clear error naming the flag and the columns there are."""
    import pandas as pd

    if name is None:
        raise PlannerError(f"{flag}: required for this fit")
    if name not in table.columns:
        raise PlannerError(f"{flag}: no column {name!r} in the data; columns: {', '.join(map(str, table.columns))}")
    values = pd.to_numeric(table[name], errors="coerce")
    bad = values.isna() & table[name].notna()
    if bad.any():
        row = int(bad.idxmax())
        raise PlannerError(f"{flag}: row {row} of {name!r} is not a number ({table[name][row]!r})")
    return values.to_numpy(dtype=float)


def _client(uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return mlflow, MlflowClient(uri)


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise PlannerError(f"DATA: no MLflow experiment {name!r}; there are: {', '.join(names) or 'none'}")
    return exp.experiment_id


def _mlflow_runs(experiment: str, tracking_uri: str | None):
    uri = tracking_uri or DEFAULT_TRACKING_URI
    with open_store(uri, must_exist=True):
        mlflow, client = _client(uri)
        frame = mlflow.search_runs(experiment_ids=[_experiment_id(client, experiment)], filter_string="",
                                   output_format="pandas")
    tag = f"tags.{PARENT_RUN_TAG}"
    if tag in frame.columns:  # a ladder's parent run groups the runs and measured nothing itself
        frame = frame[frame[tag] != "true"]
    if frame.empty:
        raise PlannerError(f"DATA: MLflow experiment {experiment!r} has no runs")
    return frame.reset_index(drop=True)


def _histories(uri: str, experiment: str, metric: str, x_metric: str | None) -> list[tuple[str, list, dict]]:
    """Each run's (id, history of `metric`, {step: value of `x_metric`}) of those that logged `metric`."""
    _, client = _client(uri)
    out = []
    for run in client.search_runs([_experiment_id(client, experiment)]):
        hist = client.get_metric_history(run.info.run_id, metric)
        if hist:
            by_step = {m.step: m.value for m in client.get_metric_history(run.info.run_id, x_metric)} if x_metric \
                else {}
            out.append((run.info.run_id, hist, by_step))
    return out


def metric_history(source: str, metric: str, x_metric: str | None, tracking_uri: str | None):
    """(x, loss, run_id) arrays of every run's `metric` history; x is the step or `x_metric` at that step."""
    import numpy as np

    uri = tracking_uri or DEFAULT_TRACKING_URI
    with open_store(uri, must_exist=True):
        histories = _histories(uri, source[len(MLFLOW_PREFIX):], metric, x_metric)
    xs, ls, ids = [], [], []
    for run_id, hist, by_step in histories:
        for m in hist:
            x = by_step.get(m.step) if x_metric else m.step
            if x is not None and x > 0:
                xs.append(x)
                ls.append(m.value)
                ids.append(run_id)
    if not xs:
        raise PlannerError(f"--loss-col: no run in {source} logged the metric {metric!r}")
    return np.array(xs, float), np.array(ls, float), np.array(ids)
