"""The data pipeline's typed config (`configs/data-sample.yaml`): its schema, loading and validation.

Everything a config can get wrong is refused here, at load, in one line naming the key; the Slurm
settings are checked hardest because they reach an sbatch script. This module is the bottom of
`pretrain.data`: it reads no other module of the package but `documents`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.core import checks
from planner.core.schema import ConfigError, load_structured
from pretrain.data.documents import Source, refuse_special_source
from pretrain.data.steps.c4 import C4_DOCUMENT_RULES
from pretrain.data.steps.thresholds import check_overrides

#: The smallest vocabulary a tokenizer may be trained to: the 256 bytes of byte-level BPE and the
#: special tokens (EOS, PAD, UNK, <mask>), so every text can be encoded (below it BPE silently keeps the
#: alphabet only and the vocabulary outgrows vocab_size). T5's sentinels come on top: `sentinel_count`.
MIN_VOCAB = 256 + 4
#: T5's sentinels <extra_id_0> .. <extra_id_99> (Raffel et al. 2020): one per noise span, so 100 serve span
#: corruption of up to 1,800 input tokens (about one span per 18 inputs).
T5_SENTINELS = 100
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Za-z]{4})?")  # ISO 639 codes, as the language identifier names them


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
    #: JSON-lines input is cut into chunks of this many bytes; tasks take contiguous runs of chunks (by
    #: default one each: `chunks.default_tasks`); 2 MiB: ~25 tasks for 50 MB, balanced on 2 workers
    chunk_bytes: int = 2 << 20
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
    #: T5's sentinel tokens for span corruption, inside vocab_size; None: T5's 100, or as many as leave the
    #: byte alphabet room in a small vocabulary (`sentinel_count`)
    sentinels: int | None = None


def sentinel_count(t: TokenizerConfig) -> int:
    """How many sentinels the tokenizer is trained with: the configured count, else T5's 100, or in a small
    vocabulary the room left beside the alphabet and the other special tokens (a 300-token vocabulary gets
    40), so a small run still trains; span corruption refuses rows that need more sentinels than there are."""
    if t.sentinels is not None:
        return t.sentinels
    return min(T5_SENTINELS, t.vocab_size - MIN_VOCAB)


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
    typed = _slurm_time_as_typed(path, overrides or [])
    if typed is not None:
        cfg.curate.slurm.time = typed
    _validate(cfg)
    check_overrides(cfg.curate.overrides, domains_of(cfg))
    return cfg


def _slurm_time_as_typed(path: str | Path | None, overrides: list[str]) -> str | None:
    """curate.slurm.time as the user wrote it. YAML 1.1 reads 48:00:00 as a base-60 integer (172800), which
    sbatch would take as minutes (120 days); PyYAML's BaseLoader keeps every scalar as its text."""
    key = "curate.slurm.time="
    given = [o[len(key):] for o in overrides if o.startswith(key)]
    if given:
        return given[-1]
    if path is None:
        return None
    import yaml

    from planner.core.io import read_input

    doc = yaml.load(read_input(path, 1 << 20).decode("utf-8"), Loader=yaml.BaseLoader)  # the load above passed
    value = ((doc.get("curate") or {}).get("slurm") or {}).get("time") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def sources_of(cfg: DataPipelineConfig) -> list[Source]:
    """The configured sources as the readers take them (`documents.Source`)."""
    return [Source(s.path, s.domain, s.format, s.text_field, s.id_field) for s in cfg.sources]


def domains_of(cfg: DataPipelineConfig) -> list[str]:
    """The domains in sorted order: the order of every per-domain list and of the domain numbers on disk."""
    return sorted({s.domain for s in cfg.sources})


def _validate(cfg: DataPipelineConfig) -> None:
    if not cfg.sources:
        raise ConfigError("sources: give at least one {path, domain}")
    for i, source in enumerate(cfg.sources):
        checks.name(f"sources[{i}].domain", source.domain)  # a folder name under out_dir
        if not str(source.path).strip():  # Path("") is the current folder: everything under it would be read
            raise ConfigError(f"sources[{i}].path: empty; give a file or folder of documents")
        if not source.text_field:  # every record would be skipped as lacking it
            raise ConfigError(f"sources[{i}].text_field: empty; name the field that holds the text (e.g. text)")
        refuse_special_source(source.path)
    checks.relative_inside("tokenizer.path", cfg.tokenizer.path)
    _validate_languages(cfg.curate)
    _validate_weights(cfg)
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
                               ("tokenizer.vocab_size", cfg.tokenizer.vocab_size, MIN_VOCAB, 1 << 24),
                               ("mix.seq_len", cfg.mix.seq_len, 2, 1 << 20)):
        checks.integer(key, value, lo, hi)
    if cfg.tokenizer.sentinels is not None:
        checks.integer("tokenizer.sentinels", cfg.tokenizer.sentinels, 0, cfg.tokenizer.vocab_size - MIN_VOCAB)
    checks.integer("curate.chunk_bytes", c.chunk_bytes, 1 << 10)
    checks.number("curate.jaccard_threshold", c.jaccard_threshold, 0.0, 1.0, lo_open=True)
    _validate_slurm(c.slurm)
    checks.number("mix.max_epochs", cfg.mix.max_epochs, 1.0, 1e4)
    checks.number("curate.min_language_score", c.min_language_score, 0.0, 1.0)
    if cfg.mix.total_tokens is not None:
        checks.integer("mix.total_tokens", cfg.mix.total_tokens, 1)


def _validate_weights(cfg: DataPipelineConfig) -> None:
    """Weights are a distribution over domains that some source has."""
    if not cfg.mix.weights:
        return
    domains = {s.domain for s in cfg.sources}
    for domain, w in cfg.mix.weights.items():
        checks.number(f"mix.weights.{domain}", w, 0.0, 1.0)  # NaN passes both tests below
    total = sum(cfg.mix.weights.values())
    if abs(total - 1) > 1e-6:
        raise ConfigError(f"mix.weights: {dict(cfg.mix.weights)} sum to {total:g}, not 1")
    if any(w < 0 for w in cfg.mix.weights.values()):
        raise ConfigError("mix.weights: weights must be >= 0")
    unknown = set(cfg.mix.weights) - domains
    if unknown:
        raise ConfigError(f"mix.weights: no source has domain {sorted(unknown)} (domains: {sorted(domains)})")


def _validate_languages(c: CurateConfig) -> None:
    if not c.language:
        return
    if not c.languages:
        raise ConfigError("curate.languages: give at least one language code (e.g. [en]) or set "
                          "curate.language: false to keep every language")
    for i, code in enumerate(c.languages):
        if not isinstance(code, str) or not _LANGUAGE.fullmatch(code):
            raise ConfigError(f"curate.languages[{i}]: {code!r} is not an ISO 639 language code such as en or deu")


def _validate_slurm(sl: SlurmCurateConfig) -> None:
    """These reach an sbatch script, so nothing in them may end a line or start another directive."""
    checks.partition("curate.slurm.partition", sl.partition)
    checks.slurm_time("curate.slurm.time", sl.time)
    checks.name("curate.slurm.job_name", sl.job_name)
    checks.integer("curate.slurm.cpus_per_task", sl.cpus_per_task, 1, 4096)
    checks.integer("curate.slurm.mem_per_cpu_gb", sl.mem_per_cpu_gb, 1, 1 << 14)
    if sl.venv_activate:  # datatrove writes `source <venv_activate>` into every job script
        checks.shell_word("curate.slurm.venv_activate", sl.venv_activate)
    for key, value in (sl.sbatch_args or {}).items():  # `#SBATCH --key=value`: a space would add a directive
        checks.name("curate.slurm.sbatch_args", str(key))
        if value is None or isinstance(value, bool):  # datatrove writes `--key` alone for both: false would enable it
            raise ConfigError(f"curate.slurm.sbatch_args.{key}: {value!r}; give the option's value as text "
                              "(a flag without a value is not supported here)")
        checks.shell_word(f"curate.slurm.sbatch_args.{key}", str(value))
