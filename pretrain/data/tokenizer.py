"""The tokenizer stage: BPE (byte-level) or Unigram (digits split) trained on the curated corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import atomic_write_text, read_input
from pretrain.data.config import DataPipelineConfig, domains_of, sentinel_count
from pretrain.data.workdir import WorkDir, curated_documents

#: The special tokens; EOS is id 0 and separates documents in packed rows.
EOS, PAD, UNK = "<|endoftext|>", "<|pad|>", "<|unk|>"
#: The objectives' tokens, appended after EOS, PAD (and UNK) so their ids never move: BERT's mask token
#: (Devlin et al. 2019, §3.1) and T5's sentinels, <extra_id_0> first (Raffel et al. 2020, §3.1.4).
MASK = "<mask>"
#: A tokenizer.json of a 256k vocabulary is ~20 MB.
MAX_TOKENIZER_BYTES = 256 << 20


def sentinel(i: int) -> str:
    """T5's i-th sentinel token, as its SentencePiece vocabulary names it."""
    return f"<extra_id_{i}>"


def objective_tokens(count: int) -> list[str]:
    """The mask token and `count` sentinels, in the order they follow EOS, PAD (and UNK)."""
    return [MASK, *(sentinel(i) for i in range(count))]


def train_tokenizer(cfg: DataPipelineConfig) -> Path:
    """Train BPE (byte-level) or Unigram (digits split) on the curated mixture; EOS is id 0, PAD 1 (UNK 2 in
    Unigram), then <mask> and the sentinels: all inside vocab_size, as BERT's [MASK] is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = cfg.tokenizer
    extra = objective_tokens(sentinel_count(t))
    if t.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=t.vocab_size, special_tokens=[EOS, PAD, *extra],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                     pre_tokenizers.Digits(individual_digits=True)])
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=t.vocab_size, special_tokens=[EOS, PAD, UNK, *extra],
                                          unk_token=UNK, show_progress=False)
    texts = (d.text for dom in domains_of(cfg) for d in curated_documents(cfg, dom))
    tok.train_from_iterator(texts, trainer=trainer)
    path = WorkDir.of(cfg).tokenizer(cfg)
    atomic_write_text(path, tok.to_str())
    return path


def tokenizer_hash(path: Path) -> str:
    """The tokenizer file's SHA-256, recorded in every shard manifest: training refuses eval shards made
    with another tokenizer than its train shards."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_tokenizer(path: str | Path):
    """A tokenizer.json read as every input file is (`read_input`: no FIFO or device, size-capped), or one
    PlannerError naming it: tokenizers raises its own untyped errors for a malformed file."""
    from tokenizers import Tokenizer

    text = read_input(path, MAX_TOKENIZER_BYTES)
    try:
        return Tokenizer.from_str(text.decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 (untyped: see the docstring)
        raise PlannerError(f"{path}: not a readable tokenizer.json ({' '.join(str(exc).split())[:120]})") from None
