"""Reading an MLflow store as bad input is read: one line, never a hang, nothing created.

`planner fit mlflow:EXP`, `planner ladder predict` and `pretrain sync-mlflow` open a store a user names with
--tracking-uri (or a file records). MLflow itself would retry an unreachable server for minutes, print its
database migrations as INFO lines, create a SQLite file that did not exist, and raise its own exceptions with
tracebacks. `open_store` is the one place that turns those into what the CLI shows. MLflow is imported only here,
when asked for (the estimate path never is).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from planner.core.errors import PlannerError

#: An unreachable server costs seconds, not MLflow's default minutes of retries with backoff.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SQLITE = "sqlite:///"


def quiet_mlflow() -> None:
    """No retries for minutes, no INFO lines from MLflow's or alembic's loggers (the store's migrations)."""
    for name, value in HTTP_ENV.items():
        os.environ.setdefault(name, value)
    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)


@contextmanager
def open_store(uri: str, *, must_exist: bool) -> Iterator[None]:
    """Around every call on the store at `uri`: its failures as one PlannerError naming the URI. `must_exist`:
    a reader's SQLite store must already be there (MLflow would create an empty one and then find nothing)."""
    quiet_mlflow()
    if must_exist and uri.startswith(SQLITE) and not Path(uri[len(SQLITE):]).is_file():
        raise PlannerError(f"--tracking-uri: no MLflow store at {uri[len(SQLITE):]} (runs log to it as they train)")
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise PlannerError(f"--tracking-uri {uri}: {_first_line(exc.message)}") from None
    except OSError as exc:  # requests' connection errors are OSErrors
        raise PlannerError(f"--tracking-uri {uri}: cannot reach the store ({_first_line(str(exc))})") from None


def _first_line(text: str) -> str:
    return " ".join(str(text).split())[:300]
