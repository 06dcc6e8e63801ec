"""STAND-IN for branch obj-data's collators (issue 28), written to its announced interface so the trainer can be
built and tested before it lands; on merging obj-data this file is replaced by that branch's whole.

- `mask_tokens`: BERT's masking (Devlin et al. 2019): each position chosen with probability `rate` (at least one
  per row), of those 80% replaced by the mask token, 10% by a random token, 10% kept; labels -100 elsewhere.
- `span_corrupt`: T5's span corruption (Raffel et al. 2020; t5.data.preprocessors.random_spans_noise_mask):
  round(raw x noise_density) noise tokens in round(noise / mean_span) spans; each span replaced in the inputs by
  one sentinel and listed in the targets behind it; both end with EOS. Lengths are
  `planner.model.shapes.span_corruption_lengths`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpecialIds:
    eos: int
    pad: int
    mask: int
    sentinels: tuple[int, ...]  # <extra_id_0>, <extra_id_1>, ...


def special_ids(tokenizer_path) -> SpecialIds:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    vocab = tok.get_vocab()
    sentinels, i = [], 0
    while f"<extra_id_{i}>" in vocab:
        sentinels.append(vocab[f"<extra_id_{i}>"])
        i += 1
    return SpecialIds(vocab.get("<eos>", 0), vocab.get("<pad>", 1), vocab.get("<mask>", -1), tuple(sentinels))


def mask_tokens(tokens: torch.Tensor, generator: torch.Generator, ids: SpecialIds, vocab: int,
                rate: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = torch.rand(tokens.shape, generator=generator) < rate
    chosen[torch.arange(tokens.shape[0]), torch.rand(tokens.shape, generator=generator).argmax(1)] |= ~chosen.any(1)
    action = torch.rand(tokens.shape, generator=generator)
    random = torch.randint(0, vocab, tokens.shape, generator=generator)
    inputs = tokens.clone()
    inputs[chosen & (action < 0.8)] = ids.mask
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random[swap]
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, labels


def _segments(items: int, parts: int, generator: torch.Generator) -> list[int]:
    cuts = sorted((torch.randperm(items - 1, generator=generator)[:parts - 1] + 1).tolist())
    bounds = [0, *cuts, items]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


def span_corrupt(tokens: torch.Tensor, generator: torch.Generator, ids: SpecialIds, noise_density: float = 0.15,
                 mean_span: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    raw = tokens.shape[1]
    noise = max(1, round(raw * noise_density))
    spans = max(1, round(noise / mean_span))
    if spans > len(ids.sentinels):
        raise ValueError(f"span corruption needs {spans} sentinel tokens, the tokenizer has {len(ids.sentinels)}")
    inputs, targets = [], []
    for row in tokens.tolist():
        noise_lengths, kept_lengths = _segments(noise, spans, generator), _segments(raw - noise, spans, generator)
        enc, dec, at = [], [], 0
        for i, (kept, dropped) in enumerate(zip(kept_lengths, noise_lengths, strict=True)):
            enc += row[at:at + kept] + [ids.sentinels[i]]
            dec += [ids.sentinels[i]] + row[at + kept:at + kept + dropped]
            at += kept + dropped
        inputs.append(enc + [ids.eos])
        targets.append(dec + [ids.eos])
    return torch.tensor(inputs, dtype=tokens.dtype), torch.tensor(targets, dtype=tokens.dtype)
