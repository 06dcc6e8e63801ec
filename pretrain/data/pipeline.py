"""The data pipeline: curate -> train a tokenizer -> mix by domain weights -> pack into token shards.

    python -m pretrain.data.pipeline configs/data-sample.yaml [curate|tokenizer|pack|all] [key=value ...]

Curation runs the per-document steps (quality, repetition, C4, language, PII) and the global exact
and near-duplicate passes on datatrove's executors (`pretrain/data/executors.py`): one task on this
machine by default, `--tasks N --workers W` to split it, `--executor slurm|ray` beyond one machine.
Kept documents land in `<out_dir>/curated/<domain>/task-NNNNN.jsonl`, every dropped one in
`exclusions.jsonl`; finished tasks are skipped on a rerun, and the output does not depend on N.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from planner import checks
from planner.errors import PlannerError, guarded, one_line_parser
from planner.io import atomic_write_json, atomic_write_text
from pretrain.config import ConfigError, load_structured
from pretrain.data.documents import Document
from pretrain.data.filters import (
    C4_DOCUMENT_RULES,
    C4Rules,
    GopherQuality,
    GopherRepetition,
    LanguageFilter,
    PIIRedactor,
    Step,
)


@dataclass
class SourceConfig:
    path: str = "???"
    domain: str = "???"
    format: str = "auto"
    text_field: str = "text"
    id_field: str | None = "id"


@dataclass
class SlurmCurateConfig:
    """The Slurm job settings of `curate --executor slurm` (datatrove's SlurmPipelineExecutor)."""

    partition: str = "cpu"
    time: str = "12:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    job_name: str = "curate"
    venv_activate: str = ""  # e.g. /path/to/.venv/bin/activate, sourced by every job
    sbatch_args: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH directives, e.g. {account: x}


@dataclass
class CurateConfig:
    gopher_quality: bool = True
    gopher_repetition: bool = True
    c4: bool = True
    #: kept_lines (reference C4 and datatrove) | whole_document: where "lorem ipsum" and "{" drop a document
    c4_document_rules: str = "kept_lines"
    language: bool = True
    languages: list[str] = field(default_factory=lambda: ["en"])
    min_language_score: float = 0.65
    pii: bool = True
    exact_dedup: bool = True
    minhash_dedup: bool = True
    minhash_ngram: int = 5  # word n-gram shingles (FineWeb's 5); banding follows from jaccard_threshold
    #: JSON-lines input is cut into chunks of this many bytes; tasks take contiguous runs of chunks
    chunk_bytes: int = 64 << 20
    #: a candidate pair is a near duplicate only when its shingles' Jaccard similarity reaches this
    jaccard_threshold: float = 0.8
    slurm: SlurmCurateConfig = field(default_factory=SlurmCurateConfig)
    #: per-domain threshold overrides, e.g. {finance: {gopher_quality: {min_alpha_words: 0.6}}}
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # bpe (byte-level) | unigram (digits split, as BloombergGPT)
    vocab_size: int = 4096
    path: str = "tokenizer.json"  # relative to out_dir


@dataclass
class MixConfig:
    weights: dict[str, float] = field(default_factory=dict)  # by tokens; must sum to 1
    total_tokens: int | None = None  # None: the most the data gives without repeating any domain
    max_epochs: float = 4.0  # more repetition than this is refused (or warned, see on_exceed)
    on_exceed: str = "refuse"  # refuse | warn
    seq_len: int = 256
    eval_fraction: float = 0.05
    seed: int = 0


@dataclass
class DataTrackingConfig:
    enabled: bool = False
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "data-pipeline"


@dataclass
class DataPipelineConfig:
    out_dir: str = "data/pipeline"
    sources: list[SourceConfig] = field(default_factory=list)
    curate: CurateConfig = field(default_factory=CurateConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    tracking: DataTrackingConfig = field(default_factory=DataTrackingConfig)


def load_pipeline_config(path: str | Path | None, overrides: list[str] | None = None) -> DataPipelineConfig:
    cfg: DataPipelineConfig = load_structured(DataPipelineConfig, path, overrides)
    _validate(cfg)
    return cfg


def _validate(cfg: DataPipelineConfig) -> None:
    if not cfg.sources:
        raise ConfigError("sources: give at least one {path, domain}")
    domains = {s.domain for s in cfg.sources}
    if cfg.mix.weights:
        total = sum(cfg.mix.weights.values())
        if abs(total - 1) > 1e-6:
            raise ConfigError(f"mix.weights: {dict(cfg.mix.weights)} sum to {total:g}, not 1")
        if any(w < 0 for w in cfg.mix.weights.values()):
            raise ConfigError("mix.weights: weights must be >= 0")
        unknown = set(cfg.mix.weights) - domains
        if unknown:
            raise ConfigError(f"mix.weights: no source has domain {sorted(unknown)} (domains: {sorted(domains)})")
    if cfg.tokenizer.kind not in ("bpe", "unigram"):
        raise ConfigError(f"tokenizer.kind: {cfg.tokenizer.kind!r} is not one of bpe, unigram")
    if cfg.mix.on_exceed not in ("refuse", "warn"):
        raise ConfigError(f"mix.on_exceed: {cfg.mix.on_exceed!r} is not one of refuse, warn")
    if not 0 <= cfg.mix.eval_fraction < 1:
        raise ConfigError(f"mix.eval_fraction: {cfg.mix.eval_fraction} must be in [0, 1)")
    c = cfg.curate
    if c.c4_document_rules not in C4_DOCUMENT_RULES:
        raise ConfigError(f"curate.c4_document_rules: {c.c4_document_rules!r} is not one of "
                          f"{', '.join(C4_DOCUMENT_RULES)}")
    for key, value, lo, hi in (("curate.minhash_ngram", c.minhash_ngram, 1, 64),
                               ("tokenizer.vocab_size", cfg.tokenizer.vocab_size, 16, 1 << 24),
                               ("mix.seq_len", cfg.mix.seq_len, 2, 1 << 20)):
        checks.integer(key, value, lo, hi)
    checks.integer("curate.chunk_bytes", c.chunk_bytes, 1 << 10)
    checks.number("curate.jaccard_threshold", c.jaccard_threshold, 0.0, 1.0, lo_open=True)
    sl = c.slurm  # these reach an sbatch script
    checks.partition("curate.slurm.partition", sl.partition)
    checks.slurm_time("curate.slurm.time", sl.time)
    checks.name("curate.slurm.job_name", sl.job_name)
    checks.integer("curate.slurm.cpus_per_task", sl.cpus_per_task, 1, 4096)
    checks.integer("curate.slurm.mem_per_cpu_gb", sl.mem_per_cpu_gb, 1, 1 << 14)
    if sl.venv_activate:
        checks.no_control("curate.slurm.venv_activate", sl.venv_activate)
    for key, value in (sl.sbatch_args or {}).items():
        checks.name("curate.slurm.sbatch_args", str(key))
        checks.no_control(f"curate.slurm.sbatch_args.{key}", str(value))
    checks.number("mix.max_epochs", cfg.mix.max_epochs, 1.0, 1e4)
    checks.number("curate.min_language_score", c.min_language_score, 0.0, 1.0)
    if cfg.mix.total_tokens is not None:
        checks.integer("mix.total_tokens", cfg.mix.total_tokens, 1)


# ------------------------------------------------------------------------------------------ curate


#: datatrove's executors that `curate` runs on (pretrain/data/executors.py)
EXECUTORS = ("local", "slurm", "ray")
#: The per-document steps, in order, by name (each can be switched off in `curate:`).
DOCUMENT_STEPS = ("gopher_quality", "gopher_repetition", "c4", "language", "pii")


def document_step(c: CurateConfig, name: str, domain: str) -> Step:
    """One per-document step for one domain, with the domain's overrides."""
    over = (c.overrides.get(domain, {}) if c.overrides else {}).get(name, {})
    if name == "language":
        return LanguageFilter(c.languages, c.min_language_score)
    if name == "c4":
        over = {"document_rules": c.c4_document_rules, **over}
    return {"gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition, "c4": C4Rules,
            "pii": PIIRedactor}[name](**over)


def enabled_document_steps(c: CurateConfig) -> list[str]:
    return [name for name in DOCUMENT_STEPS if getattr(c, name)]


def curate(cfg: DataPipelineConfig, tasks: int = 1, workers: int = 1, executor: str = "local",
           quiet: bool = False) -> dict:
    """Curate every source on datatrove's executor (the five passes of `executors.py`); returns the
    merged funnel report (also written beside the output), or {"submitted": ...} once Slurm has the jobs."""
    from pretrain.data.executors import curate_sharded

    return curate_sharded(cfg, executor, tasks, workers, quiet)


def _merge_counter(into: dict, add: dict) -> None:
    for k, v in add.items():
        into[k] = into.get(k, 0) + v


def _merge_stats(into: dict, part: dict) -> None:
    for step, domains in part.items():
        for domain, s in domains.items():
            cur = into.setdefault(step, {}).setdefault(domain, {"docs_in": 0, "docs_out": 0, "chars_in": 0,
                                                                "chars_out": 0, "dropped": {}, "changed": {}})
            for k in ("docs_in", "docs_out", "chars_in", "chars_out"):
                cur[k] += s[k]
            _merge_counter(cur["dropped"], s["dropped"])
            _merge_counter(cur["changed"], s["changed"])


def _domain_totals(sources: list[dict]) -> dict:
    totals: dict[str, dict] = {}
    for s in sources:
        t = totals.setdefault(s["domain"], {"docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0})
        for k in t:
            t[k] += s[k]
    return totals


def log_report_to_mlflow(cfg: DataPipelineConfig, report: dict) -> str:
    """One MLflow run holding the funnel (documents and characters kept per domain as metrics) and the reports."""
    from mlflow.tracking import MlflowClient

    from pretrain.tracking import experiment_id

    client = MlflowClient(cfg.tracking.tracking_uri)
    exp_id = experiment_id(client, cfg.tracking.experiment, cfg.tracking.tracking_uri)
    run = client.create_run(exp_id, run_name=f"curate:{Path(cfg.out_dir).name}")
    for domain, t in report["domains"].items():
        for key, value in t.items():
            client.log_metric(run.info.run_id, f"{domain}.{key}", value)
    for name in ("curation_report.json", "curation_report.md"):
        client.log_artifact(run.info.run_id, str(Path(cfg.out_dir) / name))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def render_funnel(report: dict) -> str:
    from tabulate import tabulate

    rows = []
    order = [*DOCUMENT_STEPS, "exact_dedup", "minhash_dedup"]  # the funnel in pipeline order (JSON sorts keys)
    for step, domains in sorted(report["steps"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        for domain, s in sorted(domains.items()):
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(s["dropped"].items(), key=lambda x: -x[1]))
            changed = ", ".join(f"{r} {n}" for r, n in s["changed"].items() if n)
            rows.append([step, domain, s["docs_in"], s["docs_out"], f"{s['docs_out'] / max(1, s['docs_in']):.1%}",
                         reasons or "-", changed or "-"])
    totals = [[d, t["docs_in"], t["docs_out"], f"{t['chars_out'] / max(1, t['chars_in']):.1%}"]
              for d, t in report["domains"].items()]
    skipped = ", ".join(f"{r} {n}" for r, n in report["skipped_records"].items()) or "none"
    return "\n\n".join([
        "# Curation report",
        "```\n" + tabulate(rows, headers=["step", "domain", "docs in", "docs out", "kept", "dropped (reason n)",
                                          "changed"], tablefmt="simple", disable_numparse=True) + "\n```",
        "```\n" + tabulate(totals, headers=["domain", "docs in", "docs out", "chars kept"], tablefmt="simple",
                           disable_numparse=True) + "\n```",
        f"Unusable records skipped: {skipped}", ""])


def _read_curated(path: Path, domain: str):
    with path.open() as f:
        for line in f:
            rec = json.loads(line)
            yield Document(rec["id"], rec["text"], domain)


def curated_documents(cfg: DataPipelineConfig, domain: str):
    """The domain's kept documents in corpus order: the tasks' files in rank order."""
    report = Path(cfg.out_dir) / "curation_report.json"
    tasks = json.loads(report.read_text()).get("executor_tasks") if report.is_file() else None
    if not tasks:
        raise PlannerError(f"data: {report} is missing or from an older version; run the curate stage first")
    for rank in range(tasks):
        yield from _read_curated(Path(cfg.out_dir) / "curated" / domain / f"task-{rank:05d}.jsonl", domain)


# ------------------------------------------------------------------------------------------ tokenizer

EOS, PAD, UNK = "<|endoftext|>", "<|pad|>", "<|unk|>"


def train_tokenizer(cfg: DataPipelineConfig) -> Path:
    """Train BPE (byte-level) or Unigram (digits split) on the curated mixture; EOS is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = cfg.tokenizer
    if t.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=t.vocab_size, special_tokens=[EOS, PAD],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                     pre_tokenizers.Digits(individual_digits=True)])
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=t.vocab_size, special_tokens=[EOS, PAD, UNK], unk_token=UNK,
                                          show_progress=False)
    domains = sorted({s.domain for s in cfg.sources})
    tok.train_from_iterator((d.text for dom in domains for d in curated_documents(cfg, dom)), trainer=trainer)
    path = Path(cfg.out_dir) / t.path
    atomic_write_text(path, tok.to_str())
    return path


def tokenizer_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ mix + pack


@dataclass
class DomainPlan:
    domain: str
    weight: float
    unique_tokens: int
    target_tokens: int

    @property
    def epochs(self) -> float:
        return self.target_tokens / self.unique_tokens if self.unique_tokens else float("inf")

    @property
    def unused(self) -> float:
        """The share of the domain's unique tokens this mix never reads (0 once it takes a full epoch)."""
        return max(0.0, 1 - self.epochs) if self.unique_tokens else 0.0


def plan_mixture(weights: dict[str, float], unique: dict[str, int], total: int | None, max_epochs: float,
                 on_exceed: str = "refuse", warn_unused: bool = True) -> tuple[list[DomainPlan], list[str]]:
    """Tokens per domain for a run and how many epochs of each domain that means.

    Without a total, the largest mix that repeats no domain: min over domains of unique / weight; a
    domain that mix leaves more than half unused is warned about (`warn_unused`). A domain repeated
    more than `max_epochs` times is refused (or warned), the data-limited case BloombergGPT met with
    its finance data.
    """
    empty = [d for d, w in weights.items() if w > 0 and not unique.get(d)]
    if empty:
        raise PlannerError(f"mix: domain(s) {empty} have no tokens left after curation (weights need data); "
                           "check the curation report")
    auto = total is None
    if auto:
        total = int(min(unique[d] / w for d, w in weights.items() if w > 0))
    plans = [DomainPlan(d, w, unique[d], int(round(w * total))) for d, w in sorted(weights.items())]
    warnings = []
    if auto and warn_unused:
        limit = min((p for p in plans if p.weight > 0), key=lambda p: p.unique_tokens / p.weight).domain
        warnings += [f"mix: {p.unused:.0%} of domain {p.domain!r} goes unused: without mix.total_tokens the mix ends "
                     f"when {limit!r} runs out; set mix.total_tokens (up to mix.max_epochs repeats) to use more"
                     for p in plans if p.unused > 0.5]
    for p in plans:
        if p.epochs > max_epochs:
            message = (f"mix: domain {p.domain!r} would be repeated {p.epochs:.2f} times ({p.target_tokens:,} tokens "
                       f"wanted, {p.unique_tokens:,} unique) > mix.max_epochs {max_epochs:g}")
            if on_exceed == "refuse":
                raise PlannerError(message + "; lower mix.total_tokens or its weight, or raise mix.max_epochs")
            warnings.append(message)
    return plans, warnings


def _is_eval(doc_id: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") / 2**64 < fraction


def _encode_domain(tok, cfg: DataPipelineConfig, domain: str, batch: int = 1024) -> dict[str, list]:
    """Token ids of the domain's documents by split (train / eval by a hash of the id), curated order."""
    texts: dict[str, list[str]] = {"train": [], "eval": []}
    for d in curated_documents(cfg, domain):
        texts["eval" if _is_eval(d.id, cfg.mix.eval_fraction) else "train"].append(d.text)
    return {split: [e.ids for i in range(0, len(t), batch) for e in tok.encode_batch(t[i: i + batch])]
            for split, t in texts.items()}


def pack(cfg: DataPipelineConfig, progress: bool = True) -> dict:
    """Tokenize each domain, then write train/eval shards mixing domains by token weight."""
    from tokenizers import Tokenizer
    from tqdm import tqdm

    from pretrain.data.shards import ShardWriter

    tok_path = Path(cfg.out_dir) / cfg.tokenizer.path
    if not tok_path.is_file():
        raise PlannerError(f"tokenizer: {tok_path} does not exist; run the tokenizer stage first")
    tok = Tokenizer.from_file(str(tok_path))
    eos = tok.token_to_id(EOS)
    domains = sorted({s.domain for s in cfg.sources})
    weights = dict(cfg.mix.weights) or {d: 1 / len(domains) for d in domains}
    result = {"tokenizer": str(tok_path), "tokenizer_sha256": tokenizer_hash(tok_path)}
    encoded = {d: _encode_domain(tok, cfg, d) for d in tqdm(domains, desc="tokenize", unit="domain",
                                                            disable=not progress)}
    for split in ("train", "eval"):
        docs = {d: encoded[d][split] for d in domains}
        unique = {d: sum(len(ids) + 1 for ids in docs[d]) for d in domains}
        if split == "eval":
            if not cfg.mix.eval_fraction:
                continue
            _check_eval_split(cfg, weights, unique, {d: len(encoded[d]["train"]) + len(docs[d]) for d in domains})
            plans, warns = plan_mixture(weights, unique, None, 1.0, warn_unused=False)
        else:
            plans, warns = plan_mixture(weights, unique, cfg.mix.total_tokens, cfg.mix.max_epochs, cfg.mix.on_exceed)
        _check_one_row(cfg, split, plans)
        for w in warns:
            print(f"pretrain-data: warning: {w}", file=sys.stderr)
        writer = ShardWriter(Path(cfg.out_dir) / "shards" / split, cfg.mix.seq_len, tok.get_vocab_size(), eos,
                             tokenizer_hash=result["tokenizer_sha256"])
        _interleave(writer, plans, docs, cfg.mix.seed)
        result[split] = writer.close({"mixture": [{**asdict(p), "epochs": p.epochs, "unused": p.unused} for p in plans],
                                      "tokenizer": str(tok_path), "warnings": warns})
    atomic_write_json(Path(cfg.out_dir) / "pack_report.json", result)
    return result


def _check_eval_split(cfg: DataPipelineConfig, weights: dict[str, float], unique: dict[str, int],
                      curated: dict[str, int]) -> None:
    """An eval split is mixed by the same weights, so every weighted domain needs eval documents."""
    missing = [d for d, w in sorted(weights.items()) if w > 0 and not unique[d]]
    if missing:
        counts = ", ".join(f"{d} {curated[d]:,} curated" for d in missing)
        raise PlannerError(f"mix: no eval documents in domain(s) {missing} ({counts}; mix.eval_fraction "
                           f"{cfg.mix.eval_fraction:g} picks documents by a hash of their id); raise "
                           "mix.eval_fraction, add documents to that domain, or set mix.eval_fraction=0 for no eval split")


def _check_one_row(cfg: DataPipelineConfig, split: str, plans: list[DomainPlan]) -> None:
    tokens, row = sum(p.target_tokens for p in plans), cfg.mix.seq_len + 1
    if tokens < row:
        change = "raise mix.eval_fraction or lower mix.seq_len" if split == "eval" else \
            "add documents, raise mix.total_tokens or lower mix.seq_len"
        raise PlannerError(f"mix: the {split} split would hold {tokens:,} tokens, less than one row of "
                           f"mix.seq_len + 1 = {row:,}; {change}")


def _interleave(writer, plans: list[DomainPlan], docs: dict[str, list], seed: int) -> None:
    """Write documents so every prefix of the stream follows the weights (largest deficit first);
    a domain that runs out starts its next epoch in a new order (seeded)."""
    import numpy as np

    cursors = {p.domain: 0 for p in plans}
    orders = {p.domain: np.arange(len(docs[p.domain])) for p in plans}
    epochs = dict.fromkeys(cursors, 0)
    written = dict.fromkeys(cursors, 0)
    active = [p for p in plans if p.target_tokens > 0 and docs[p.domain]]
    while active:
        total = sum(written.values()) + 1
        p = max(active, key=lambda q: q.weight * total - written[q.domain])
        d = p.domain
        if cursors[d] == len(orders[d]):
            epochs[d] += 1
            orders[d] = np.random.default_rng([seed, epochs[d], len(d)]).permutation(len(docs[d]))
            cursors[d] = 0
        ids = docs[d][int(orders[d][cursors[d]])]
        cursors[d] += 1
        take = ids[: max(0, p.target_tokens - written[d] - 1)]
        writer.add(take, domain=d)
        written[d] += len(take) + 1
        if written[d] >= p.target_tokens:
            active.remove(p)


def main(argv: list[str] | None = None) -> int:

    parser = one_line_parser("pretrain-data", "Curate, tokenize, mix and pack a corpus.")
    parser.add_argument("config")
    parser.add_argument("stage", nargs="?", default="all", choices=["curate", "tokenizer", "pack", "all"])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="datatrove executor the curation passes run on (default: local, this machine).")
    parser.add_argument("--tasks", type=int, default=1, help="Tasks the input is split into (output does not depend on it).")
    parser.add_argument("--workers", type=int, default=1, help="Tasks run at once.")
    args = parser.parse_intermixed_args(argv)

    def run() -> None:
        cfg = load_pipeline_config(args.config, args.overrides)
        if args.stage in ("curate", "all"):
            report = curate(cfg, args.tasks, args.workers, args.executor, args.quiet)
            if report.get("submitted"):
                print(f"curation submitted to {args.executor}; logs and progress per task in {report['logs']}")
                return
            print(render_funnel(report))
            if cfg.tracking.enabled:
                print(f"curation report logged to MLflow run {log_report_to_mlflow(cfg, report)}")
        if args.stage in ("tokenizer", "all"):
            print(f"tokenizer: {train_tokenizer(cfg)}")
        if args.stage in ("pack", "all"):
            result = pack(cfg, progress=not args.quiet)
            for split in ("train", "eval"):
                if split in result:
                    m = result[split]
                    mix = ", ".join(f"{x['domain']} {x['target_tokens']:,} tokens ({x['epochs']:.2f} epochs, "
                                    f"{x['unused']:.0%} of its tokens unused)" for x in m["mixture"])
                    print(f"{split}: {m['rows']:,} rows of {m['seq_len'] + 1} tokens in {len(m['shards'])} shard(s); {mix}")

    return guarded("pretrain-data", run)


if __name__ == "__main__":
    sys.exit(main())
