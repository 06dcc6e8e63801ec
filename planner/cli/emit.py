"""`planner emit`: a plan written as run.yaml, the DeepSpeed JSON, launch scripts, plan.json and PLAN.md."""

from __future__ import annotations

import json

import click

from planner.cli.options import COUNT, build_request, estimate_options
from planner.core.errors import PlannerError


@click.command()
@estimate_options
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder to write the files into.")
@click.option("--name", default="run", show_default=True, help="Run name (MLflow run, SLURM job, rendezvous id).")
@click.option("--data", "data_train", default="data/shards/train", show_default=True, help="Training token shards.")
@click.option("--eval-data", "data_eval", help="Held-out token shards.")
@click.option("--tokenizer", help="tokenizer.json the shards were made with.")
@click.option("--batch-tokens", type=COUNT, help="Global batch in tokens per optimizer step [default: 4,194,304].")
@click.option("--global-batch", type=int, help="Global batch in sequences per optimizer step (instead of --batch-tokens).")
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
@click.option("--force", is_flag=True, help="Replace the files of another job already in --out.")
def emit(out_dir, name, data_train, data_eval, tokenizer, batch_tokens, global_batch, lr, checkpoint_every, eval_every, tracking_uri,
         experiment, nodes, slurm_partition, slurm_time, max_time, env_setup, force, **kw):
    """Write run.yaml, ds_config.json, launch scripts, plan.json and PLAN.md for a plan."""
    from planner.emit.run_files import EmitOptions
    from planner.emit.run_files import emit as run_emit

    if batch_tokens is not None and global_batch is not None:
        raise PlannerError("--global-batch: give the global batch once, in sequences or (--batch-tokens) in tokens")
    if global_batch is not None and global_batch < 1:
        raise PlannerError(f"--global-batch: {global_batch} must be a whole number of sequences >= 1")
    req = build_request(kw)
    microbatches = kw.get("microbatches")
    if microbatches is not None and batch_tokens is None and global_batch is None:
        global_batch = req.layout.batch  # --microbatches alone sets the batch: micro-batch x m x data-parallel ranks
    batch_tokens = float(2**22) if batch_tokens is None else batch_tokens
    if batch_tokens != int(batch_tokens):
        raise PlannerError(f"--batch-tokens: {batch_tokens!r} must be a whole number of tokens")
    opts = EmitOptions(microbatches=microbatches, out_dir=out_dir, name=name, data_train=data_train, data_eval=data_eval, tokenizer=tokenizer,
                       batch_tokens=int(batch_tokens), global_batch=global_batch, lr=lr, checkpoint_every=checkpoint_every, eval_every=eval_every,
                       tracking_uri=tracking_uri, experiment=experiment, nodes=nodes, slurm_partition=slurm_partition,
                       slurm_time=slurm_time, max_time=max_time, env_setup=env_setup, force=force)
    written = run_emit(req, opts)
    for path in written.values():
        click.echo(f"wrote {path}")
    plan = json.loads(written["plan.json"].read_text())
    if not plan["fits"]:
        need, have = plan["memory_per_gpu_bytes"]["total"] / 2**30, plan["gpu_memory_bytes"] / 2**30
        click.echo(f"note: the plan needs {need:,.1f} GiB a GPU, a {plan['hardware']['gpu']} holds {have:,.1f}: "
                   "`launch` will refuse it unless --force (`planner compare` ranks the layouts that fit)", err=True)
