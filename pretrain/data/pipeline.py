"""The data pipeline's command line: curate -> train a tokenizer -> mix by domain weights -> pack into token shards.

    python -m pretrain.data.pipeline configs/data-sample.yaml [curate|tokenizer|pack|all] [key=value ...]

Curation runs the per-document steps (quality, repetition, C4, language, PII) and the global exact
and near-duplicate passes on datatrove's executors (`pretrain/data/executors.py`): one task on this
machine by default, `--tasks N --workers W` to split it, `--executor slurm|ray` beyond one machine.
Kept documents land in `<out_dir>/curated/<domain>/task-NNNNN.jsonl`, every dropped one in
`exclusions.jsonl` (`workdir.py`); finished tasks are skipped on a rerun, and the output does not depend on N.
Each stage lives in its own module (`executors`, `tokenizer`, `mix`); this one only parses and dispatches.
"""

from __future__ import annotations

import argparse
import sys

from planner.core.errors import guarded, one_line_parser
from pretrain.data.config import DataPipelineConfig, load_pipeline_config
from pretrain.data.executors import EXECUTORS, curate
from pretrain.data.mix import pack
from pretrain.data.report import log_report_to_mlflow, render_funnel
from pretrain.data.tokenizer import train_tokenizer


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)

    def run() -> None:
        cfg = load_pipeline_config(args.config, args.overrides)
        if args.stage in ("curate", "all") and not _curate(cfg, args):
            return
        if args.stage in ("tokenizer", "all"):
            print(f"tokenizer: {train_tokenizer(cfg)}")
        if args.stage in ("pack", "all"):
            _pack(cfg, args)

    return guarded("pretrain-data", run)


def _parser() -> argparse.ArgumentParser:
    parser = one_line_parser("pretrain-data", "Curate, tokenize, mix and pack a corpus.")
    parser.add_argument("config")
    parser.add_argument("stage", nargs="?", default="all", choices=["curate", "tokenizer", "pack", "all"])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="datatrove executor the curation passes run on (default: local, this machine).")
    parser.add_argument("--tasks", type=int, default=None,
                        help="Tasks the input is split into (default: one per input chunk, at most 64; "
                             "the output does not depend on it).")
    parser.add_argument("--workers", type=int, default=1, help="Tasks run at once.")
    return parser


def _curate(cfg: DataPipelineConfig, args: argparse.Namespace) -> bool:
    """Curate and print the funnel; False when the jobs were only submitted (the later stages must wait)."""
    report = curate(cfg, args.executor, args.tasks, args.workers, args.quiet)
    if report.get("submitted"):
        print(f"curation submitted to {args.executor}; logs and progress per task in {report['logs']}")
        return False
    print(render_funnel(report))
    if cfg.tracking.enabled:
        print(f"curation report logged to MLflow run {log_report_to_mlflow(cfg, report)}")
    return True


def _pack(cfg: DataPipelineConfig, args: argparse.Namespace) -> None:
    result = pack(cfg, progress=not args.quiet)
    for split in ("train", "eval"):
        if split in result:
            m = result[split]
            mix = ", ".join(f"{x['domain']} {x['target_tokens']:,} tokens ({x['epochs']:.2f} epochs, "
                            f"{x['unused']:.0%} of its tokens unused)" for x in m["mixture"])
            print(f"{split}: {m['rows']:,} rows of {m['seq_len'] + 1} tokens in {len(m['shards'])} shard(s); {mix}")


if __name__ == "__main__":
    sys.exit(main())
