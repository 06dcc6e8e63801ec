"""`planner estimate`, `compare` and `verify`: one plan's memory, fit, compute and cost; every strategy
side by side; the real model and engine under fake tensors against the plan."""

from __future__ import annotations

import json

import click

from planner.cli.options import build_request, estimate_options
from planner.core.errors import PlannerError


@click.command()
@estimate_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def estimate(as_json, **kw):
    """Memory per GPU, fit, FLOPs, GPU-hours, days and cost of training a model."""
    from planner.plan.estimate import estimate as run_estimate

    result = run_estimate(build_request(kw)).to_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from planner.report.tables import render_estimate

        click.echo(render_estimate(result))


@click.command()
@estimate_options
@click.option("--plot", type=click.Path(), help="Write a stacked-bar PNG of memory per GPU by strategy here.")
@click.option("--search", is_flag=True, help="Explore every runnable layout (strategy, TP, PP, EP for MoE, micro-batch, "
              "checkpointing) on --gpus and print the fastest that fit.")
@click.option("--top", type=click.IntRange(1, 100), default=10, show_default=True, help="Layouts --search prints.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def compare(plot, search, top, as_json, **kw):
    """Every strategy side by side, fastest predicted step per token first (step time, tokens/s per GPU,
    MFU, memory per GPU, headroom, largest micro-batch, communication, whole nodes), the one to run marked;
    or, with --search, the fastest layouts of the whole space."""
    from planner.plan.compare import compare as run_compare
    from planner.plan.compare import render_compare

    if plot == "":
        raise PlannerError("--plot: give the PNG's file name")
    if kw.get("mfu") is not None:  # one MFU for every layout would tie them all
        raise PlannerError("--mfu: compare ranks layouts by each one's predicted step time; a measured MFU belongs "
                           "to one layout (give it to estimate)")
    if search:
        from planner.plan.search import render_search
        from planner.plan.search import search as run_search

        found = run_search(build_request(kw), top)
        click.echo(json.dumps(found, indent=2) if as_json else render_search(found))
        return
    result = run_compare(build_request(kw))
    if plot:
        from planner.report.plots import plot_strategies

        plot_strategies(result, plot)
    click.echo(json.dumps(result, indent=2) if as_json else render_compare(result))


@click.command()
@estimate_options
@click.option("--steps", type=click.IntRange(2, 5), default=2, show_default=True, help="Optimizer steps to run.")
@click.option("--jobs", type=click.IntRange(0, 256), default=0, show_default=True,
              help="Processes that measure a pipeline's ranks side by side (0: one per CPU core).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def verify(steps, jobs, as_json, **kw):
    """Dry-run the real model and engine at the planned world size (fake tensors, no GPU) and compare
    PyTorch's memory tracker with the planner, line by line."""
    import os

    from planner.cli.verify import render_verify, verify_request

    result = verify_request(build_request(kw), steps, jobs or os.cpu_count() or 1)
    click.echo(json.dumps(result, indent=2) if as_json else render_verify(result))
