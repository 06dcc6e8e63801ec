"""`planner optimal`: compute-optimal parameters, tokens and loss for a budget in any unit."""

from __future__ import annotations

import json

import click

from planner.cli.options import COUNT
from planner.compute import flops as compute
from planner.core.errors import PlannerError


@click.command()
@click.option("--flops", type=COUNT, help="Budget in FLOPs, e.g. 5.76e23.")
@click.option("--pf-days", type=COUNT, help="Budget in petaFLOP/s-days.")
@click.option("--gpu-hours", type=COUNT, help="Budget in GPU-hours of --gpu at --mfu.")
@click.option("--days", type=COUNT, help="Budget in wall-clock days on --gpus GPUs at --mfu.")
@click.option("--dollars", type=COUNT, help="Budget in USD at --price (default: the catalog's).")
@click.option("--law", default="epoch", show_default=True,
              help="epoch (Besiroglu et al. 2024 refit of Chinchilla, ~20 tokens/param), chinchilla (eq. 10 as "
                   "published), chinchilla-unrounded, tokens-per-param, kaplan, or a fitted law .json.")
@click.option("--tokens-per-param", type=float, default=20.0, show_default=True, help="Ratio for --law tokens-per-param.")
@click.option("--params", type=COUNT, help="Fix the model size: with a budget, the tokens it buys; alone, the "
              "law's optimal tokens for this size and the budget they imply.")
@click.option("--max-tokens", type=COUNT, help="Unique tokens available (data-limited case).")
@click.option("--max-epochs", type=float, default=1.0, show_default=True, help="Times the data may be repeated.")
@click.option("--gpu", default="a100-80gb", show_default=True)
@click.option("--gpu-catalog", type=click.Path(), help="YAML file adding or overriding catalog entries.")
@click.option("--gpus", type=int, default=8, show_default=True, help="GPUs, for --days and the restated budget.")
@click.option("--mfu", type=float, default=compute.DEFAULT_MFU, show_default=True)
@click.option("--price", type=float, help="USD per GPU-hour (default: the catalog's).")
@click.option("--seq-len", type=int, default=2048, show_default=True, help="For the suggested shape.")
@click.option("--arch", type=click.Choice(["decoder", "encoder", "encoder-decoder"]), default="decoder",
              show_default=True, help="Architecture the budget trains; the shipped laws are decoder-only's.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def optimal(flops, pf_days, gpu_hours, days, dollars, law, tokens_per_param, params, max_tokens, max_epochs,
            gpu, gpu_catalog, gpus, mfu, price, seq_len, arch, as_json):
    """Compute-optimal parameters, tokens and loss for a budget in any unit."""
    from planner.laws.optimal import optimal_for_budget

    if arch != "decoder":
        raise PlannerError(f"--arch {arch}: the compute-optimal laws (Chinchilla, Kaplan, Epoch's refit) were fitted "
                           "on decoder-only models; none is shipped for this architecture")
    budgets = {"flops": flops, "pf_days": pf_days, "gpu_hours": gpu_hours, "days": days, "dollars": dollars}
    given = {k: v for k, v in budgets.items() if v is not None}
    if len(given) > 1 or (not given and params is None):
        raise PlannerError("budget: give exactly one of --flops, --pf-days, --gpu-hours, --days, --dollars "
                           "(or --params alone)")
    (unit, amount), = given.items() if given else ((None, None),)
    result = optimal_for_budget(unit, amount, law_name=law, tokens_per_param=tokens_per_param, params=params,
                                max_tokens=max_tokens, max_epochs=max_epochs, gpu_name=gpu,
                                gpu_catalog=gpu_catalog, gpus=gpus, mfu=mfu, price=price, seq_len=seq_len)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from planner.report.tables import render_optimal

        click.echo(render_optimal(result))
