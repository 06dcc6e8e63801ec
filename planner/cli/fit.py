"""`planner fit nd|curve|isoflop`: power laws fitted to runs (a CSV, JSON or an MLflow experiment)."""

from __future__ import annotations

import json

import click

from planner.cli.options import COUNT
from planner.core.errors import PlannerError


@click.group()
def fit() -> None:
    """Fit power laws to loss curves (curve), grids of runs (nd) or isoFLOP profiles (isoflop)."""


def _fit_options(f):
    for decorator in reversed([
        click.argument("data"),
        click.option("--n-col", help="Column of parameter counts (MLflow: params.NAME)."),
        click.option("--d-col", help="Column of training tokens."),
        click.option("--flops-col", help="Column of training FLOPs (D = C / 6N when --d-col is absent)."),
        click.option("--loss-col", default="loss", show_default=True, help="Column (or MLflow metric) of losses."),
        click.option("--bootstrap", type=click.IntRange(0, 10_000), default=0, show_default=True,
                     help="Bootstrap resamples for standard errors."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--tracking-uri", help="MLflow tracking URI for mlflow:EXPERIMENT data (default sqlite:///mlflow.db)."),
        click.option("--out", type=click.Path(), help="Write the fitted law as JSON here."),
        click.option("--plot", type=click.Path(), help="Write a PNG plot here."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    ]):
        f = decorator(f)
    return f


def _emit_fit(result, out, as_json, name) -> None:
    from planner.core.io import atomic_write_json
    from planner.report.tables import render_fit

    payload = {k: v for k, v in result.to_dict().items() if not k.startswith("_") and k != "bootstrap_params"}
    payload["name"] = name
    if out and result.converged:  # a law file is only ever a converged fit (`optimal --law` trusts it)
        atomic_write_json(out, payload)
    click.echo(json.dumps(payload, indent=2) if as_json else render_fit(payload))
    if not result.converged:
        kept = f"; {out} was not written" if out else ""
        click.echo(f"planner: warning: the fit did not converge ({result.message}); the values above are the "
                   f"best found, not a converged fit{kept}", err=True)
        raise click.exceptions.Exit(1)
    if result.message:  # converged, with a caveat (no floor: the pure power law)
        click.echo(f"planner: note: {result.message}", err=True)


@fit.command("nd")
@_fit_options
@click.option("--drop-worst", type=int, default=0, show_default=True, help="Exclude the K highest-loss runs.")
@click.option("--max-iter", type=click.IntRange(1), default=10_000, show_default=True, help="L-BFGS iterations per start.")
def fit_nd_cmd(data, n_col, d_col, flops_col, loss_col, bootstrap, seed, tracking_uri, out, plot, as_json, drop_worst,
               max_iter):
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. approach 3, Huber loss, L-BFGS)."""
    from planner.laws.fit import fit_nd
    from planner.laws.rundata import column, load_table

    table = load_table(data, tracking_uri)
    n = column(table, n_col, "--n-col")
    if d_col is None and flops_col is None:
        raise PlannerError("--d-col or --flops-col: one is needed (tokens, or FLOPs to derive D = C / 6N)")
    d = column(table, d_col, "--d-col") if d_col else column(table, flops_col, "--flops-col") / (6 * n)
    loss = column(table, loss_col, "--loss-col")
    result = fit_nd(n, d, loss, drop_worst=drop_worst, bootstrap=bootstrap, seed=seed, max_iter=max_iter)
    if plot:
        from planner.report.plots import plot_nd

        plot_nd(result, n, d, loss, plot)
    _emit_fit(result, out, as_json, f"fit-nd:{data}")


#: Readable axis names for the trainer's metric names.
AXIS_LABELS = {"step": "optimizer step", "flops_seen": "training FLOPs", "tokens_seen": "training tokens",
               "tokens": "training tokens"}


@fit.command("curve")
@_fit_options
@click.option("--x-col", help="Column (or MLflow metric) of x: steps, tokens or FLOPs (MLflow default: the step).")
@click.option("--run-col", help="Column naming the run; with several runs the lower envelope is fitted.")
@click.option("--min-x", type=float, default=0.0, show_default=True, help="Ignore points with x below this (warm-up).")
@click.option("--target", type=COUNT, help="Extrapolate the loss to this x.")
def fit_curve_cmd(data, n_col, d_col, flops_col, loss_col, bootstrap, seed, tracking_uri, out, plot, as_json,
                  x_col, run_col, min_x, target):
    """Fit L(x) = E + A·x^-alpha to a loss curve, or to the lower envelope of many runs."""
    import numpy as np

    from planner.core import checks
    from planner.laws.fit import MAX_X, fit_curve, lower_envelope
    from planner.laws.rundata import MLFLOW_PREFIX, column, load_table, metric_history

    checks.number("--min-x", min_x, 0.0, MAX_X)
    if data.startswith(MLFLOW_PREFIX):
        x, loss, runs = metric_history(data, loss_col, x_col, tracking_uri)
    else:
        table = load_table(data)
        x = column(table, x_col, "--x-col")
        loss = column(table, loss_col, "--loss-col")
        if run_col and run_col not in table.columns:
            raise PlannerError(f"--run-col: no column {run_col!r} in the data (columns: {', '.join(table.columns)})")
        runs = table[run_col].to_numpy() if run_col else np.zeros(len(x))
    keep = x >= min_x
    x, loss, runs = x[keep], loss[keep], runs[keep]
    envelope = lower_envelope(x, loss) if np.unique(runs).size > 1 else None
    fx, fl = envelope if envelope is not None else (x, loss)
    result = fit_curve(fx, fl, bootstrap=bootstrap, seed=seed, target=target)
    result.extra["envelope"] = envelope is not None
    result.extra["runs"] = int(np.unique(runs).size)
    if plot:
        from planner.report.plots import plot_curve

        plot_curve(result, x, loss, plot, x_label=AXIS_LABELS.get(x_col or "step", x_col), envelope=envelope)
    _emit_fit(result, out, as_json, f"fit-curve:{data}")


@fit.command("isoflop")
@_fit_options
def fit_isoflop_cmd(data, n_col, d_col, flops_col, loss_col, bootstrap, seed, tracking_uri, out, plot, as_json):
    """Approaches 1-2: loss minimum per compute budget, then N* ∝ C^a and D* ∝ C^b."""
    from planner.laws.fit import fit_isoflop
    from planner.laws.rundata import column, load_table

    table = load_table(data, tracking_uri)
    n = column(table, n_col, "--n-col")
    flops = column(table, flops_col, "--flops-col") if flops_col else 6 * n * column(table, d_col, "--d-col")
    loss = column(table, loss_col, "--loss-col")
    result = fit_isoflop(n, flops, loss)
    if plot:
        from planner.report.plots import plot_isoflop

        plot_isoflop(result, n, flops, loss, plot)
    _emit_fit(result, out, as_json, f"fit-isoflop:{data}")
