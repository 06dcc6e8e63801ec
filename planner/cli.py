"""`planner` command line: estimate (and, as they land, optimal, fit, emit).

Human tables by default, `--json` for machines. Every bad input is one line on stderr naming
the flag, the value and what is valid, with exit status 2 (never a traceback).
"""

from __future__ import annotations

import json
import sys

import click

from planner import compute, memory
from planner.errors import PlannerError
from planner.units import parse_count

EXIT_USAGE = 2


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


@cli.command()
@_model_options
@click.option("--gpu", default="a100-80gb", show_default=True, help="GPU from the catalog (see `planner gpus`).")
@click.option("--gpu-catalog", type=click.Path(), help="YAML file adding or overriding catalog entries.")
@click.option("--gpus", type=int, default=8, show_default=True, help="Total GPUs.")
@click.option("--gpus-per-node", type=int, default=8, show_default=True)
@click.option("--precision", type=click.Choice(memory.PRECISIONS), default="bf16-mixed", show_default=True)
@click.option("--optimizer", type=click.Choice(memory.OPTIMIZERS), default="adamw", show_default=True)
@click.option("--zero", type=click.IntRange(0, 3), help="DeepSpeed ZeRO stage (0-3).")
@click.option("--fsdp", type=click.Choice(memory.FSDP_MODES), help="PyTorch FSDP sharding strategy.")
@click.option("--sharding-factor", type=int, help="GPUs per shard group for --fsdp hybrid (default: all).")
@click.option("--offload", type=click.Choice(memory.OFFLOAD), default="none", show_default=True,
              help="CPU offload of optimizer states, parameters, or both.")
@click.option("--convention", type=click.Choice(memory.CONVENTIONS),
              help="Model-state accounting (default: the engine's own; zero-paper: 16 B/param).")
@click.option("--micro-batch", type=int, default=1, show_default=True, help="Sequences per GPU per step.")
@click.option("--checkpointing", type=click.Choice(memory.CHECKPOINTING), default="none", show_default=True,
              help="Activation checkpointing (Korthikanti et al. 2022).")
@click.option("--no-flash-attention", is_flag=True, help="Count the a*s^2 attention scores as stored.")
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel degree (sequence parallel on).")
@click.option("--tokens", type=COUNT, help="Training tokens (default: 20 per parameter, Chinchilla).")
@click.option("--mfu", type=float, default=compute.DEFAULT_MFU, show_default=True,
              help="Model FLOPs utilisation (0-1].")
@click.option("--price", type=float, help="USD per GPU-hour (default: the catalog's).")
@click.option("--runtime-gib", type=float, default=memory.DEFAULT_RUNTIME_GIB, show_default=True,
              help="CUDA context and library workspaces per GPU.")
@click.option("--fragmentation", type=float, default=memory.DEFAULT_FRAGMENTATION, show_default=True,
              help="Allocator fragmentation margin (fraction).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def estimate(params, model, layers, hidden, heads, kv_heads, ffn, vocab, mlp, tied_embeddings, seq_len,
             gpu, gpu_catalog, gpus, gpus_per_node, precision, optimizer, zero, fsdp, sharding_factor, offload,
             convention, micro_batch, checkpointing, no_flash_attention, tp, tokens, mfu, price, runtime_gib,
             fragmentation, as_json):
    """Memory per GPU, fit, FLOPs, GPU-hours, days and cost of training a model."""
    from planner.hardware import load_catalog
    from planner.plan import EstimateRequest
    from planner.plan import estimate as run_estimate

    shape = build_shape(layers, hidden, heads, kv_heads, ffn, vocab, seq_len, mlp, tied_embeddings)
    request = EstimateRequest(
        params=params, model=model, shape=shape, seq_len=seq_len, gpu=gpu, gpus=gpus,
        gpus_per_node=gpus_per_node, precision=precision, optimizer=optimizer, zero=zero, fsdp=fsdp,
        sharding_factor=sharding_factor, offload=offload, convention=convention, micro_batch=micro_batch,
        checkpointing=checkpointing, flash_attention=not no_flash_attention, tp=tp, tokens=tokens, mfu=mfu,
        price=price, runtime_gib=runtime_gib, fragmentation=fragmentation,
        catalog=load_catalog(gpu_catalog) if gpu_catalog else None,
    )
    result = run_estimate(request)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from planner.report import render_estimate

        click.echo(render_estimate(result))


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and exit status 2 for any bad input."""
    try:
        cli.main(args=argv, prog_name="planner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("planner: aborted", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"planner: error: {_one_line(exc.format_message())}", err=True)
        return EXIT_USAGE
    except PlannerError as exc:
        click.echo(f"planner: error: {_one_line(str(exc))}", err=True)
        return EXIT_USAGE
    return 0


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
