"""`planner ladder design|predict|report`: a designed sweep whose fitted law predicts a held-out run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from planner.cli.options import COUNT
from planner.core.errors import PlannerError
from planner.core.parallel import ENGINES


@click.group()
def ladder() -> None:
    """A designed sweep whose fitted law predicts a held-out run (planner/laws/ladder.py)."""


def _floats(value: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise PlannerError(f"{flag}: {value!r} is not a comma-separated list of numbers") from None


@ladder.command("design")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder for the ladder.")
@click.option("--data", "train", required=True, help="Training token shards (one pass: no token is repeated).")
@click.option("--eval-data", "eval_data", required=True, help="Held-out token shards (the loss the law fits).")
@click.option("--widths", default="16,24,32,48", show_default=True, help="Hidden sizes of the ladder.")
@click.option("--holdout-width", type=int, default=64, show_default=True, help="The held-out (largest) size.")
@click.option("--layers", type=int, default=1, show_default=True)
@click.option("--vocab", type=int, required=True)
@click.option("--seq-len", type=int, required=True)
@click.option("--batch-tokens", type=int, default=2048, show_default=True, help="Tokens per optimizer step, every size.")
@click.option("--micro-batch", type=int, default=16, show_default=True)
@click.option("--multiples", default="1,2,4", show_default=True, help="Token multiples per size (x k x N^g).")
@click.option("--tokens-exponent", type=float, default=1.0, show_default=True,
              help="g: tokens per size scale as N^g (1: equal tokens per parameter; 0: equal token counts).")
@click.option("--eval-batches", type=click.IntRange(1, 100_000), default=16, show_default=True,
              help="Micro-batches of the eval shards each run's eval loss (the fitted loss) averages.")
@click.option("--lr-ref", type=float, default=0.01, show_default=True,
              help="Learning rate at width 64; each size gets lr-ref x 64/width, capped at 0.03.")
@click.option("--ladder-flops", type=COUNT, required=True, help="Model FLOPs the ladder may spend.")
@click.option("--target-flops", type=COUNT, required=True, help="The held-out run's budget, predicted before it trains.")
@click.option("--experiment", default="ladder", show_default=True, help="MLflow experiment (SQLite store in --out).")
@click.option("--bootstrap", type=click.IntRange(0, 10_000), default=30, show_default=True)
@click.option("--holdout-engine", type=click.Choice(ENGINES), default="single",
              show_default=True, help="The held-out run's engine (deepspeed: ZeRO-2, fsdp: full sharding).")
@click.option("--holdout-gpus", type=click.IntRange(1, 1 << 16), default=1, show_default=True,
              help="Ranks of the held-out run (through `launch local`); the ladder's runs use one.")
def ladder_design(out_dir, train, eval_data, widths, holdout_width, layers, vocab, seq_len, batch_tokens, micro_batch,
                  multiples, tokens_exponent, eval_batches, lr_ref, ladder_flops, target_flops, experiment, bootstrap,
                  holdout_engine, holdout_gpus):
    """Design the ladder, write one run config per point and run_ladder.sh, and say what it costs."""
    from planner.laws import ladder as ladder_mod

    lad = ladder_mod.design(widths=_floats(widths, "--widths"), holdout_width=holdout_width,
                            layers=layers, vocab=vocab, seq_len=seq_len, batch_tokens=batch_tokens,
                            ladder_flops=ladder_flops, target_flops=target_flops,
                            multiples=_floats(multiples, "--multiples"), lr_ref=lr_ref,
                            tokens_exponent=tokens_exponent)
    ladder_mod.write(lad, out_dir, train=train, eval_data=eval_data, micro_batch=micro_batch, experiment=experiment,
                     bootstrap=bootstrap, python=sys.executable, holdout_engine=holdout_engine,
                     holdout_gpus=holdout_gpus, eval_batches=eval_batches)
    click.echo(f"{'point':<28}{'params':>10}{'tokens':>12}{'steps':>8}{'lr':>9}{'FLOPs':>11}")
    for p in lad.points:
        click.echo(f"{p.name:<28}{p.params:>10,}{p.tokens:>12,}{p.steps:>8,}{p.lr:>9.4g}{p.flops:>11.3g}")
    held = sum(p.flops for p in lad.points if p.held_out)
    click.echo(f"ladder: {lad.spent_flops:.3g} model FLOPs ({lad.spent_flops / lad.ladder_flops:.0%} of the budget); "
               f"held-out run {held:.3g} FLOPs; {sum(p.tokens for p in lad.points):,} tokens in all")
    click.echo(f"run it: {Path(out_dir) / 'run_ladder.sh'}")


@ladder.command("predict")
@click.argument("ladder_dir", type=click.Path())
@click.option("--bootstrap", type=click.IntRange(0, 10_000), default=30, show_default=True)
def ladder_predict(ladder_dir, bootstrap):
    """Fit the finished ladder runs; write the held-out prediction into its run config."""
    from planner.laws import ladder as ladder_mod

    r = ladder_mod.predict(ladder_dir, bootstrap)
    low, high = r["band"]
    law = ", ".join(f"{k} {v:.4g}" for k, v in r["law"].items())
    click.echo(f"law fitted on {r['fitted_on']} runs: {law}{'' if r['converged'] else ' (NOT converged)'}")
    if r["converged"] and r["message"]:
        click.echo(f"  note: {r['message']}")
    click.echo(f"held-out {r['held_out']}: predicted eval loss {r['loss_predicted']:.4f} (95% band {low:.4f}-{high:.4f})")


@ladder.command("report")
@click.argument("ladder_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def ladder_report(ladder_dir, as_json):
    """The held-out error, the fitted E against a known entropy rate, and the re-plan or why not."""
    from planner.laws import ladder as ladder_mod

    r = ladder_mod.report(ladder_dir)
    if as_json:
        click.echo(json.dumps(r, indent=2, sort_keys=True))
        return
    low, high = r["band"]
    click.echo(f"held-out {r['held_out']}: predicted {r['loss_predicted']:.4f} (band {low:.4f}-{high:.4f}), "
               f"measured {r['loss_measured']:.4f}: error {r['error']:+.2%}")
    click.echo(f"ladder {ladder_mod.describe_monotone(r['monotone'])}")
    if "true_entropy_rate" in r:
        click.echo(f"fitted E {r['law']['E']:.4f} vs the source's entropy rate {r['true_entropy_rate']:.4f}: "
                   f"{r['E_error']:+.2%}")
    if r["usable"]:
        click.echo(ladder_mod.describe_replan(r["replan"]))
    else:
        click.echo(f"not used to re-plan: {r['refusal']}")
