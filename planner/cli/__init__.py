"""`planner`: the command line, one module per command group.

Human tables by default, `--json` for machines. Every bad input is one line on stderr naming
the flag, the value and what is valid, with exit status 2 (never a traceback). This package is the
planner's only floor that may import `pretrain` (`verify`, lazily, to run the real model; `probe`, to
measure this machine).
"""

from __future__ import annotations

import click

from planner.cli import emit, estimate, fit, gpus, ladder, optimal, probe
from planner.core.errors import guarded, print_error


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="pretrain-planner")
def cli() -> None:
    """Plan an LLM pretraining run: memory, compute, cost and compute-optimal size."""


for command in (estimate.estimate, estimate.compare, estimate.verify, emit.emit, optimal.optimal, fit.fit, gpus.gpus,
                ladder.ladder, probe.probe):
    cli.add_command(command)


def run_group(group: click.Group, prog: str, argv: list[str] | None = None) -> int:
    """Run a click group with one-line errors: usage errors, bad input and unreadable or unwritable files
    exit 2 (`planner.core.errors.guarded`), never a traceback."""
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


def main(argv: list[str] | None = None) -> int:
    return run_group(cli, "planner", argv)
