"""`planner probe`: measure this machine as a catalog entry the step-time model reads (`device: cpu`).

The measurement (`pretrain.hardware_probe`) needs torch and is imported only here, when asked for, as `verify`
is. The entry's peaks are achieved rates (a GEMM, a copy, gloo's collectives between two local processes), so the
step-time model uses them at face value (`planner.compute.step_time.PROBED`), one trainer process per "GPU".
"""

from __future__ import annotations

import datetime

import click

from planner.core.errors import PlannerError

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def catalog_entry(name: str, m: dict) -> str:
    """The probe's figures as catalog YAML (planner/model/hardware.py's format)."""
    bus_gbps = m["allreduce_bus_bytes_per_s"] / 1e9
    today = datetime.date.today().isoformat()
    return "\n".join([
        f'"{name}":',  # quoted: YAML reads a bare yes, null or 0x10 as a boolean, None or number
        "  device: cpu",
        f"  description: \"measured by planner probe on {today}: {m['threads']} thread(s) per process, "
        f"{m['cpus']} CPUs\"",
        f"  memory_gib: {m['memory_gib']:.1f}",
        f"  peak_tflops: {{fp32: {m['fp32_flops'] / 1e12:.6g}, bf16: {m['bf16_flops'] / 1e12:.6g}}}",
        f"  attention_tflops: {{fp32: {m['fp32_attention_flops'] / 1e12:.6g}, "
        f"bf16: {m['bf16_attention_flops'] / 1e12:.6g}}}  # causal SDPA forward + backward",
        f"  hbm_gbps: {m['copy_bytes_per_s'] / 1e9:.4g}  # a copy: bytes read + written per second",
        f"  interconnect_gbps: {2 * bus_gbps:.4g}  # both directions, as the catalog counts NVLink (gloo, loopback)",
        f"  network_gbps: {bus_gbps:.4g}",
        f"  shard_collectives_gbps: {m['shard_bus_bytes_per_s'] / 1e9:.4g}  # all-gather + reduce-scatter (gloo)",
        f"  all_gather_gbps: {m['all_gather_bus_bytes_per_s'] / 1e9:.4g}  # all-gather alone (gloo)",
        "  price_per_hour: 0",
        ""])


@click.command()
@click.option("--name", default="this-cpu", show_default=True, help="The catalog entry's name.")
@click.option("--threads", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Threads per trainer process (launch sets OMP_NUM_THREADS=1).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the entry to this YAML file (else print it).")
def probe(name, threads, out):
    """Measure this machine (matmul FLOP/s, memory and gloo bandwidth; ~30 s) as a --gpu-catalog entry."""
    if not name or set(name.lower()) - NAME_CHARS:
        raise PlannerError(f"--name: {name!r} must be letters, digits, '-', '_' or '.'")
    if out is not None:
        from planner.core.io import check_writable

        check_writable(out)  # before the half-minute of measuring, not after
    from pretrain.hardware_probe import probe as measure  # torch: only when probing

    text = catalog_entry(name.lower(), measure(threads))
    if out is None:
        click.echo(text, nl=False)
        return
    from planner.core.io import atomic_write_text

    atomic_write_text(out, text)
    click.echo(f"wrote {out}: use it with --gpu-catalog {out} --gpu {name.lower()}")
