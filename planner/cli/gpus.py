"""`planner gpus`: the accelerator catalog."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--gpu-catalog", type=click.Path(), help="YAML file adding or overriding catalog entries.")
@click.option("--json", "as_json", is_flag=True)
def gpus(gpu_catalog, as_json):
    """List the GPU catalog (dense peak TFLOP/s, memory, price)."""
    from planner.model.hardware import load_catalog
    from planner.report.tables import render_gpus

    catalog = load_catalog(gpu_catalog)
    if as_json:
        click.echo(json.dumps({k: g.__dict__ for k, g in catalog.items()}, indent=2))
    else:
        click.echo(render_gpus(catalog))
