"""`planner` command line: estimate (and, as they land, optimal, fit, emit).

Human tables by default, `--json` for machines. Every bad input is one line on stderr naming
the flag, the value and what is valid, with exit status 2 (never a traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from planner import compute, memory, parallel
from planner.errors import PlannerError, guarded, print_error
from planner.units import parse_count


class CountType(click.ParamType):
    """A positive count written as 7e9, 7B, 70b, 1.3e9 or 1.4T."""

    name = "count"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_count(value, param.opts[0] if param else "value")
        except PlannerError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


COUNT = CountType()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="pretrain-planner")
def cli() -> None:
    """Plan an LLM pretraining run: memory, compute, cost and compute-optimal size."""


def _model_options(f):
    f = click.option("--params", type=COUNT, help="Total parameters: 7e9, 7B, 70b, 1.3e9.")(f)
    f = click.option("--model", "model", help="Named preset, e.g. llama2-7b, gpt3-175b, bloomberggpt-50b.")(f)
    f = click.option("--layers", type=int, help="Shape: transformer layers.")(f)
    f = click.option("--hidden", type=int, help="Shape: hidden size.")(f)
    f = click.option("--heads", type=int, help="Shape: attention heads.")(f)
    f = click.option("--kv-heads", type=int, help="Shape: key/value heads (grouped-query attention).")(f)
    f = click.option("--ffn", type=int, help="Shape: MLP hidden size (default 8h/3 rounded to 256, SwiGLU).")(f)
    f = click.option("--vocab", type=int, help="Shape: vocabulary size.")(f)
    f = click.option("--mlp", type=click.Choice(["swiglu", "gelu"]), default="swiglu", show_default=True,
                     help="Shape: MLP kind.")(f)
    f = click.option("--tied-embeddings", is_flag=True, help="Shape: LM head shares the embedding matrix.")(f)
    f = click.option("--seq-len", type=int, help="Sequence length (default: preset's, else 2048).")(f)
    f = click.option("--hf-config", type=click.Path(), help="A Hugging Face config.json on disk (Llama, Mistral, "
                     "Qwen2, Gemma, OLMo, GPT-NeoX, GPT-2 field names).")(f)
    f = click.option("--config", "run_config", type=click.Path(),
                     help="Estimate the job a run config (run.yaml from `planner emit`) describes.")(f)
    return f


def build_shape(layers, hidden, heads, kv_heads, ffn, vocab, seq_len, mlp, tied_embeddings):
    """A ModelShape from shape flags, or None when no shape flag is given."""
    from planner.shapes import ModelShape

    flags = {"--layers": layers, "--hidden": hidden, "--heads": heads, "--vocab": vocab}
    if all(v is None for v in (*flags.values(), kv_heads, ffn)):
        return None
    missing = [k for k, v in flags.items() if v is None]
    if missing:
        raise PlannerError(f"shape: also give {' '.join(missing)} (a shape needs --layers --hidden --heads --vocab)")
    return ModelShape(layers, hidden, heads, vocab, seq_len or 2048, kv_heads=kv_heads, ffn_hidden=ffn,
                      mlp=mlp, norm="layernorm" if mlp == "gelu" else "rmsnorm", tied_embeddings=tied_embeddings)


def _estimate_options(f):
    options = [
        click.option("--gpu", default="a100-80gb", show_default=True, help="GPU from the catalog (see `planner gpus`)."),
        click.option("--gpu-catalog", type=click.Path(), help="YAML file adding or overriding catalog entries."),
        click.option("--gpus", type=int, default=8, show_default=True, help="Total GPUs."),
        click.option("--gpus-per-node", type=int, default=8, show_default=True),
        click.option("--precision", type=click.Choice(memory.PRECISIONS), default="bf16-mixed", show_default=True),
        click.option("--optimizer", type=click.Choice(memory.OPTIMIZERS), default="adamw", show_default=True),
        click.option("--zero", type=click.IntRange(0, 3), help="DeepSpeed ZeRO stage (0-3)."),
        click.option("--fsdp", type=click.Choice(parallel.FSDP_MODES), help="PyTorch FSDP sharding strategy."),
        click.option("--sharding-factor", type=int, help="GPUs per shard group for --fsdp hybrid (default: all)."),
        click.option("--offload", type=click.Choice(parallel.OFFLOAD), default="none", show_default=True,
                     help="CPU offload of optimizer states, parameters, or both."),
        click.option("--convention", type=click.Choice(memory.CONVENTIONS),
                     help="Model-state accounting (default: the engine's own; zero-paper: 16 B/param)."),
        click.option("--micro-batch", type=int, default=1, show_default=True, help="Sequences per GPU per step."),
        click.option("--checkpointing", type=click.Choice(memory.CHECKPOINTING), default="none", show_default=True,
                     help="Activation checkpointing (Korthikanti et al. 2022)."),
        click.option("--no-flash-attention", is_flag=True, help="Count the a*s^2 attention scores as stored."),
        click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel degree (sequence parallel on)."),
        click.option("--tokens", type=COUNT, help="Training tokens (default: 20 per parameter, Chinchilla)."),
        click.option("--mfu", type=float, default=compute.DEFAULT_MFU, show_default=True,
                     help="Model FLOPs utilisation (0-1]."),
        click.option("--price", type=float, help="USD per GPU-hour (default: the catalog's)."),
        click.option("--runtime-gib", type=float, default=memory.DEFAULT_RUNTIME_GIB, show_default=True,
                     help="CUDA context and library workspaces per GPU."),
        click.option("--fragmentation", type=float, default=memory.DEFAULT_FRAGMENTATION, show_default=True,
                     help="Share of reserved GPU memory the allocator cannot use (GMLake's measured average)."),
        click.option("--finetune", type=click.Choice(["full", "lora", "qlora", "prompt"]),
                     help="Fine-tune instead of pretraining: all weights, LoRA, QLoRA (4-bit NF4 base) or prompt tuning."),
        click.option("--lora-rank", type=int, default=8, show_default=True, help="LoRA/QLoRA rank r."),
        click.option("--lora-modules", default="q,v", show_default=True,
                     help="Adapted matrices: q,k,v,o,gate,up,down (or q_proj,... names)."),
        click.option("--soft-tokens", type=int, default=20, show_default=True, help="Prompt tuning: soft tokens k."),
    ]
    for option in reversed(options):
        f = option(f)
    return _model_options(f)


def build_request(kw: dict):
    """An EstimateRequest from the shared estimate/emit options (consumes them from `kw`)."""
    from planner.hardware import load_catalog
    from planner.plan import EstimateRequest

    run_config, hf_config = kw.pop("run_config"), kw.pop("hf_config")
    shape = build_shape(*(kw.pop(k) for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")),
                        kw["seq_len"], kw.pop("mlp"), kw.pop("tied_embeddings"))
    if run_config is not None:
        if shape is not None or hf_config or kw["params"] or kw["model"]:
            raise PlannerError("--config: the run config names the model; drop --params/--model/--hf-config/shape flags")
        from planner.emit import request_from_run_config

        return request_from_run_config(run_config)
    if hf_config is not None:
        if shape is not None:
            raise PlannerError("--hf-config: give the config or shape flags, not both")
        from planner.hf_config import shape_from_hf

        shape = shape_from_hf(hf_config, kw["seq_len"])
    catalog = kw.pop("gpu_catalog")
    kw["flash_attention"] = not kw.pop("no_flash_attention")
    from planner.finetune import parse_modules

    kw["lora_modules"] = parse_modules(kw["lora_modules"])
    return EstimateRequest(shape=shape, catalog=load_catalog(catalog) if catalog else None, **kw)


@cli.command()
@_estimate_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def estimate(as_json, **kw):
    """Memory per GPU, fit, FLOPs, GPU-hours, days and cost of training a model."""
    from planner.plan import estimate as run_estimate

    result = run_estimate(build_request(kw))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from planner.report import render_estimate

        click.echo(render_estimate(result))


@cli.command()
@_estimate_options
@click.option("--plot", type=click.Path(), help="Write a stacked-bar PNG of memory per GPU by strategy here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def compare(plot, as_json, **kw):
    """Every strategy side by side (memory per GPU, headroom, largest micro-batch, communication, whole
    nodes), with the one to run marked."""
    from planner.compare import compare as run_compare
    from planner.compare import render_compare

    result = run_compare(build_request(kw))
    if plot:
        from planner.plots import plot_strategies

        plot_strategies(result, plot)
    click.echo(json.dumps(result, indent=2) if as_json else render_compare(result))


@cli.command()
@_estimate_options
@click.option("--steps", type=click.IntRange(2, 5), default=2, show_default=True, help="Optimizer steps to run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def verify(steps, as_json, **kw):
    """Dry-run the real model and engine at the planned world size (fake tensors, no GPU) and compare
    PyTorch's memory tracker with the planner, line by line."""
    from planner.verify import render_verify, verify_request

    result = verify_request(build_request(kw), steps)
    click.echo(json.dumps(result, indent=2) if as_json else render_verify(result))


@cli.command()
@_estimate_options
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder to write the files into.")
@click.option("--name", default="run", show_default=True, help="Run name (MLflow run, SLURM job, rendezvous id).")
@click.option("--data", "data_train", default="data/shards/train", show_default=True, help="Training token shards.")
@click.option("--eval-data", "data_eval", help="Held-out token shards.")
@click.option("--tokenizer", help="tokenizer.json the shards were made with.")
@click.option("--batch-tokens", type=COUNT, default=float(2**22), show_default=True,
              help="Global batch in tokens per optimizer step.")
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--checkpoint-every", type=int, default=1000, show_default=True)
@click.option("--eval-every", type=int, default=1000, show_default=True)
@click.option("--tracking-uri", default="sqlite:///mlflow.db", show_default=True)
@click.option("--experiment", default="pretrain", show_default=True)
@click.option("--nodes", type=int, help="Nodes (default: gpus / gpus-per-node).")
@click.option("--partition", "slurm_partition", help="SLURM partition.")
@click.option("--time", "slurm_time", help="SLURM time limit (default: the plan's wall-clock with a margin).")
@click.option("--max-time", default="48:00:00", show_default=True,
              help="The partition's limit: a longer plan becomes a chain of dependent jobs (submit.sh).")
@click.option("--env-setup", help="Line that activates the environment in the batch script (default: this venv).")
def emit(out_dir, name, data_train, data_eval, tokenizer, batch_tokens, lr, checkpoint_every, eval_every, tracking_uri,
         experiment, nodes, slurm_partition, slurm_time, max_time, env_setup, **kw):
    """Write run.yaml, ds_config.json, launch scripts, plan.json and PLAN.md for a plan."""
    from planner.emit import EmitOptions
    from planner.emit import emit as run_emit

    if batch_tokens != int(batch_tokens):
        raise PlannerError(f"--batch-tokens: {batch_tokens!r} must be a whole number of tokens")
    opts = EmitOptions(out_dir=out_dir, name=name, data_train=data_train, data_eval=data_eval, tokenizer=tokenizer,
                       batch_tokens=int(batch_tokens), lr=lr, checkpoint_every=checkpoint_every, eval_every=eval_every,
                       tracking_uri=tracking_uri, experiment=experiment, nodes=nodes, slurm_partition=slurm_partition,
                       slurm_time=slurm_time, max_time=max_time, env_setup=env_setup)
    written = run_emit(build_request(kw), opts)
    for path in written.values():
        click.echo(f"wrote {path}")


@cli.command()
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def optimal(flops, pf_days, gpu_hours, days, dollars, law, tokens_per_param, params, max_tokens, max_epochs,
            gpu, gpu_catalog, gpus, mfu, price, seq_len, as_json):
    """Compute-optimal parameters, tokens and loss for a budget in any unit."""
    from planner.optimal import optimal_for_budget

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
        from planner.report import render_optimal

        click.echo(render_optimal(result))


@cli.group()
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
    from planner.io import atomic_write_json
    from planner.report import render_fit

    payload = {k: v for k, v in result.to_dict().items() if not k.startswith("_") and k != "bootstrap_params"}
    payload["name"] = name
    if out:
        atomic_write_json(out, payload)
    click.echo(json.dumps(payload, indent=2) if as_json else render_fit(payload))
    if not result.converged:
        click.echo(f"planner: warning: the fit did not converge ({result.message}); the values above are the "
                   "best found, not a converged fit", err=True)
        raise click.exceptions.Exit(1)


@fit.command("nd")
@_fit_options
@click.option("--drop-worst", type=int, default=0, show_default=True, help="Exclude the K highest-loss runs.")
@click.option("--max-iter", type=click.IntRange(1), default=10_000, show_default=True, help="L-BFGS iterations per start.")
def fit_nd_cmd(data, n_col, d_col, flops_col, loss_col, bootstrap, seed, tracking_uri, out, plot, as_json, drop_worst,
               max_iter):
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. approach 3, Huber loss, L-BFGS)."""
    from planner.fit import fit_nd
    from planner.rundata import column, load_table

    table = load_table(data, tracking_uri)
    n = column(table, n_col, "--n-col")
    if d_col is None and flops_col is None:
        raise PlannerError("--d-col or --flops-col: one is needed (tokens, or FLOPs to derive D = C / 6N)")
    d = column(table, d_col, "--d-col") if d_col else column(table, flops_col, "--flops-col") / (6 * n)
    loss = column(table, loss_col, "--loss-col")
    result = fit_nd(n, d, loss, drop_worst=drop_worst, bootstrap=bootstrap, seed=seed, max_iter=max_iter)
    if plot:
        from planner.plots import plot_nd

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

    from planner.fit import fit_curve, lower_envelope
    from planner.rundata import MLFLOW_PREFIX, column, load_table, metric_history

    if data.startswith(MLFLOW_PREFIX):
        x, loss, runs = metric_history(data, loss_col, x_col, tracking_uri)
    else:
        table = load_table(data)
        x = column(table, x_col, "--x-col")
        loss = column(table, loss_col, "--loss-col")
        runs = table[run_col].to_numpy() if run_col else np.zeros(len(x))
        if run_col and run_col not in table.columns:
            raise PlannerError(f"--run-col: no column {run_col!r} in the data")
    keep = x >= min_x
    x, loss, runs = x[keep], loss[keep], runs[keep]
    envelope = lower_envelope(x, loss) if np.unique(runs).size > 1 else None
    fx, fl = envelope if envelope is not None else (x, loss)
    result = fit_curve(fx, fl, bootstrap=bootstrap, seed=seed, target=target)
    result.extra["envelope"] = envelope is not None
    result.extra["runs"] = int(np.unique(runs).size)
    if plot:
        from planner.plots import plot_curve

        plot_curve(result, x, loss, plot, x_label=AXIS_LABELS.get(x_col or "step", x_col), envelope=envelope)
    _emit_fit(result, out, as_json, f"fit-curve:{data}")


@fit.command("isoflop")
@_fit_options
def fit_isoflop_cmd(data, n_col, d_col, flops_col, loss_col, bootstrap, seed, tracking_uri, out, plot, as_json):
    """Approaches 1-2: loss minimum per compute budget, then N* ∝ C^a and D* ∝ C^b."""
    from planner.fit import fit_isoflop
    from planner.rundata import column, load_table

    table = load_table(data, tracking_uri)
    n = column(table, n_col, "--n-col")
    flops = column(table, flops_col, "--flops-col") if flops_col else 6 * n * column(table, d_col, "--d-col")
    loss = column(table, loss_col, "--loss-col")
    result = fit_isoflop(n, flops, loss)
    if plot:
        from planner.plots import plot_isoflop

        plot_isoflop(result, n, flops, loss, plot)
    _emit_fit(result, out, as_json, f"fit-isoflop:{data}")


@cli.command()
@click.option("--gpu-catalog", type=click.Path(), help="YAML file adding or overriding catalog entries.")
@click.option("--json", "as_json", is_flag=True)
def gpus(gpu_catalog, as_json):
    """List the GPU catalog (dense peak TFLOP/s, memory, price)."""
    from planner.hardware import load_catalog
    from planner.report import render_gpus

    catalog = load_catalog(gpu_catalog)
    if as_json:
        click.echo(json.dumps({k: g.__dict__ for k, g in catalog.items()}, indent=2))
    else:
        click.echo(render_gpus(catalog))


def run_group(group: click.Group, prog: str, argv: list[str] | None = None) -> int:
    """Run a click group with one-line errors: usage errors, bad input and unreadable or unwritable files
    exit 2 (`planner.errors.guarded`), never a traceback."""
    def run() -> int:
        try:
            code = group.main(args=argv, prog_name=prog, standalone_mode=False)
        except click.exceptions.Exit as exc:
            return exc.exit_code
        except click.exceptions.Abort:
            click.echo(f"{prog}: aborted", err=True)
            return 1
        except click.ClickException as exc:
            return print_error(prog, exc.format_message())
        return code if isinstance(code, int) else 0

    return guarded(prog, run)


@cli.group()
def ladder() -> None:
    """A designed sweep whose fitted law predicts a held-out run (planner/ladder.py)."""


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
@click.option("--multiples", default="1,2,4", show_default=True, help="Token multiples per size (x k x N).")
@click.option("--lr-ref", type=float, default=0.01, show_default=True,
              help="Learning rate at width 64; each size gets lr-ref x 64/width, capped at 0.03.")
@click.option("--ladder-flops", type=COUNT, required=True, help="Model FLOPs the ladder may spend.")
@click.option("--target-flops", type=COUNT, required=True, help="The held-out run's budget, predicted before it trains.")
@click.option("--experiment", default="ladder", show_default=True, help="MLflow experiment (SQLite store in --out).")
@click.option("--bootstrap", type=click.IntRange(0, 10_000), default=30, show_default=True)
@click.option("--holdout-engine", type=click.Choice(["single", "ddp", "deepspeed", "fsdp"]), default="single",
              show_default=True, help="The held-out run's engine (deepspeed: ZeRO-2, fsdp: full sharding).")
@click.option("--holdout-gpus", type=click.IntRange(1, 1 << 16), default=1, show_default=True,
              help="Ranks of the held-out run (through `launch local`); the ladder's runs use one.")
def ladder_design(out_dir, train, eval_data, widths, holdout_width, layers, vocab, seq_len, batch_tokens, micro_batch,
                  multiples, lr_ref, ladder_flops, target_flops, experiment, bootstrap, holdout_engine, holdout_gpus):
    """Design the ladder, write one run config per point and run_ladder.sh, and say what it costs."""
    from planner import ladder as ladder_mod

    lad = ladder_mod.design(widths=[int(w) for w in _floats(widths, "--widths")], holdout_width=holdout_width,
                            layers=layers, vocab=vocab, seq_len=seq_len, batch_tokens=batch_tokens,
                            ladder_flops=ladder_flops, target_flops=target_flops,
                            multiples=_floats(multiples, "--multiples"), lr_ref=lr_ref)
    ladder_mod.write(lad, out_dir, train=train, eval_data=eval_data, micro_batch=micro_batch, experiment=experiment,
                     bootstrap=bootstrap, python=sys.executable, holdout_engine=holdout_engine,
                     holdout_gpus=holdout_gpus)
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
    from planner import ladder as ladder_mod

    r = ladder_mod.predict(ladder_dir, bootstrap)
    low, high = r["band"]
    law = ", ".join(f"{k} {v:.4g}" for k, v in r["law"].items())
    click.echo(f"law fitted on {r['fitted_on']} runs: {law}{'' if r['converged'] else ' (NOT converged)'}")
    click.echo(f"held-out {r['held_out']}: predicted eval loss {r['loss_predicted']:.4f} (95% band {low:.4f}-{high:.4f})")


@ladder.command("report")
@click.argument("ladder_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def ladder_report(ladder_dir, as_json):
    """The held-out error, the fitted E against a known entropy rate, and the re-plan or why not."""
    from planner import ladder as ladder_mod

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
        p = r["replan"]
        click.echo(f"re-plan at the target budget: N {p['params']:.4g}, D {p['tokens']:.4g}, loss {p['loss']:.4f}")
    else:
        click.echo(f"not used to re-plan: {r['refusal']}")


def main(argv: list[str] | None = None) -> int:
    return run_group(cli, "planner", argv)


if __name__ == "__main__":
    sys.exit(main())
