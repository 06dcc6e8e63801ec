"""The mix + pack stage: tokens per domain from the weights (`plan_mixture`), the train/eval split by a
hash of each document's id, and the documents interleaved into packed token shards (`shards`)."""

from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import atomic_write_json
from pretrain.data.config import DataPipelineConfig, domains_of
from pretrain.data.tokenizer import EOS, load_tokenizer, tokenizer_hash
from pretrain.data.workdir import WorkDir, curated_documents


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
    from tqdm import tqdm

    wd = WorkDir.of(cfg)
    tok_path = wd.tokenizer(cfg)
    if not tok_path.is_file():
        raise PlannerError(f"tokenizer: {tok_path} does not exist; run the tokenizer stage first")
    tok = load_tokenizer(tok_path)
    domains = domains_of(cfg)
    weights = dict(cfg.mix.weights) or {d: 1 / len(domains) for d in domains}
    result = {"tokenizer": str(tok_path), "tokenizer_sha256": tokenizer_hash(tok_path)}
    encoded = {d: _encode_domain(tok, cfg, d) for d in tqdm(domains, desc="tokenize", unit="domain",
                                                            disable=not progress)}
    # every split planned and checked before any is written: a refusal leaves the last pack's shards whole
    planned = {}
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
        planned[split] = (plans, docs, warns)
    for split, (plans, docs, warns) in planned.items():
        for w in warns:
            print(f"pretrain-data: warning: {w}", file=sys.stderr)
        result[split] = _write_split(cfg, tok, split, plans, docs, result["tokenizer_sha256"], warns)
    _replace_splits(wd, list(planned))
    atomic_write_json(wd.pack_report, result)
    return result


def _staging(wd: WorkDir, split: str) -> Path:
    return wd.shards(split).with_name(f".{split}.packing")


def _write_split(cfg: DataPipelineConfig, tok, split: str, plans: list[DomainPlan], docs: dict[str, list],
                 tok_sha: str, warns: list[str]) -> dict:
    """One split's shards, documents interleaved by the plan, in a staging folder beside the split's (moved into
    place by `_replace_splits` once every split is written); returns its manifest."""
    from pretrain.data.shards import ShardWriter

    wd = WorkDir.of(cfg)
    staging = _staging(wd, split)
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted pack's
    writer = ShardWriter(staging, cfg.mix.seq_len, tok.get_vocab_size(), tok.token_to_id(EOS), tokenizer_hash=tok_sha)
    _interleave(writer, plans, docs, cfg.mix.seed)
    return writer.close({"mixture": [{**asdict(p), "epochs": p.epochs, "unused": p.unused} for p in plans],
                         "tokenizer": str(wd.tokenizer(cfg)), "warnings": warns})


def _replace_splits(wd: WorkDir, written: list[str]) -> None:
    """The new splits in place of the last pack's; a split this pack did not write (no eval split now) is removed,
    so no stale eval shards sit beside a train split that may hold their documents."""
    for split in ("train", "eval"):
        final = wd.shards(split)
        old = final.with_name(f".{split}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        if split in written:
            _staging(wd, split).rename(final)
        shutil.rmtree(old, ignore_errors=True)


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
    """A split shorter than one row would pack into nothing; say which setting to change instead."""
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
