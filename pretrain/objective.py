"""The run's pretraining objective applied to packed rows: what the model reads and what its loss scores.

`PackedBatches` yields (inputs, targets), rows of seq_len + 1 tokens split for next-token prediction. Per
objective (`planner.core.schema.objective_of`):

- `clm` (decoders): as they come.
- `mlm` (encoders): the row's first seq_len tokens masked by `pretrain.data.objectives.mask_tokens` (15%: 80% mask
  token, 10% random, 10% kept); the labels hold the original token at the masked positions and -100 elsewhere, so
  the loss is over the masked positions only (`pretrain.encoder.masked_cross_entropy`).
- `span-corruption` (encoder-decoders): the whole row of raw tokens corrupted by
  `pretrain.data.objectives.span_corrupt` (noise density 0.15, mean span 3) into the encoder's `seq_len` inputs and
  the decoder's targets; the model reads the targets shifted right behind the pad id (teacher forcing). The rows
  must be exactly the raw length whose corrupted inputs are `seq_len` long
  (`planner.model.shapes.span_corruption_raw_length`: 568 for 512), so the shards are packed at that length - 1.

The masking is drawn from a generator seeded by the run's seed, the step, the micro-batch and the data-parallel
rank (`generator`), so a resumed run masks exactly as the uninterrupted one did, and every evaluation masks the
held-out batches alike. Tokens, as the planner counts them: one per encoder input position (`seq_len` per sequence,
T5's own convention: 2^35 tokens = 2^19 steps x 128 sequences x 512 inputs), whatever the objective.

Special tokens: from the run's tokenizer (`data.tokenizer`: `<mask>`, `<pad>`, `<extra_id_i>`), or, for shards
made without one (the synthetic corpora), ids reserved above the shards' vocabulary: pad, mask, then sentinels up to
model.vocab.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from planner.core.errors import PlannerError
from planner.core.schema import RunConfig, objective_of
from planner.model.shapes import MEAN_SPAN, NOISE_DENSITY, span_corruption_counts, span_corruption_raw_length
from pretrain.data import objectives as collate

MASK_RATE = 0.15


def generator(seed: int, kind: str, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator for one micro-batch's masking: the same numbers for the same (seed, kind, step, micro, rank)."""
    key = hashlib.sha256(f"{seed}/{kind}/{step}/{micro}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


def reserved_ids(data_vocab: int, model_vocab: int, eos: int) -> collate.SpecialIds:
    """Special ids above a tokenizer-less corpus's `data_vocab` ids: pad, mask, then the sentinels to model_vocab."""
    return collate.SpecialIds(eos=eos, pad=data_vocab, mask=data_vocab + 1,
                              sentinels=tuple(range(model_vocab - 1, data_vocab + 1, -1)))


@dataclass
class Objective:
    """One run's objective over its shards (`for_run`), applied to each micro-batch (`apply`)."""

    name: str
    seed: int
    rank: int
    ids: collate.SpecialIds | None = None
    data_vocab: int = 0
    raw: int = 0  # span corruption: raw tokens per row

    @classmethod
    def for_run(cls, cfg: RunConfig, shards, rank: int) -> Objective:
        """The objective of `cfg` over `shards` (the training set) on data-parallel rank `rank`; checks that the
        shards suit it and, for an encoder-decoder, sets model.decoder_start_id to the pad id when unset."""
        name, m = objective_of(cfg), cfg.model
        if name == "clm":
            return cls(name, cfg.train.seed, rank)
        if cfg.data.tokenizer:
            ids = collate.special_ids(cfg.data.tokenizer)
        else:
            if m.vocab < shards.vocab_size + 2:
                raise PlannerError(f"model.vocab: {m.vocab}: {name} over shards without a tokenizer reserves the ids "
                                   f"past their vocab_size {shards.vocab_size} (pad, mask, then sentinels); raise "
                                   "model.vocab")
            ids = reserved_ids(shards.vocab_size, m.vocab, int(shards.typed.eos_id))
        objective = cls(name, cfg.train.seed, rank, ids, shards.vocab_size)
        if name == "mlm":
            if ids.mask is None or not 0 <= ids.mask < m.vocab:
                raise PlannerError(f"data.tokenizer: {cfg.data.tokenizer} has no <mask> token below model.vocab")
            return objective
        objective.raw = span_corruption_raw_length(m.seq_len)
        spans = span_corruption_counts(objective.raw)[1]
        if len(ids.sentinels) < spans:
            raise PlannerError(f"data: span corruption of {objective.raw} raw tokens needs {spans} sentinel tokens "
                               f"(<extra_id_i>), there are {len(ids.sentinels)}")
        if m.decoder_start_id is None:
            m.decoder_start_id = ids.pad
        return objective

    def expected_row_tokens(self, model_seq_len: int) -> int:
        """Tokens each shard row must hold (seq_len + 1 of the shards)."""
        return self.raw if self.name == "span-corruption" else model_seq_len + 1

    def apply(self, batch: tuple[torch.Tensor, torch.Tensor], step: int, micro: int,
              kind: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """What the model reads and scores for one micro-batch of packed rows (`kind` train or eval: their own
        masking streams)."""
        if self.name == "clm":
            return batch
        inputs, targets = batch
        g = generator(self.seed, kind, step, micro, self.rank)
        if self.name == "mlm":
            return collate.mask_tokens(inputs, g, self.ids, self.data_vocab, rate=MASK_RATE)
        rows = torch.cat([inputs, targets[:, -1:]], dim=1)
        return collate.span_corrupt(rows, g, self.ids, noise_density=NOISE_DENSITY, mean_span=MEAN_SPAN)
