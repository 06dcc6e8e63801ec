"""The pretraining objectives' inputs: BERT's masked LM and T5's span corruption over packed token rows.

Both work on a batch of rows cut from our packed shards (documents joined by EOS), on the CPU, with a
seeded `torch.Generator`, so a run draws the same corruption on every engine and every restart.

    mask_tokens     masked LM (Devlin et al. 2019, §3.1 and Appendix A.1): 15% of the tokens are chosen
                    for prediction; of those 80% become the mask token, 10% a random token, 10% stay
    span_corrupt    span corruption (Raffel et al. 2020, §3.1.4; t5.data.preprocessors
                    `random_spans_noise_mask`, `noise_span_to_unique_sentinel`,
                    `nonnoise_span_to_unique_sentinel`): 15% of the tokens dropped in spans of mean length 3,
                    each span replaced by one sentinel in the inputs and spelled out after it in the targets

and the measures of what a batch actually did (`masked_fraction`, `mask_split`, `span_stats`), which the
tests check on real shards against the targets above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from planner.core.errors import PlannerError
from planner.model.shapes import MEAN_SPAN, NOISE_DENSITY, span_corruption_counts
from pretrain.data.tokenizer import EOS, MASK, PAD, load_tokenizer, sentinel

#: The label that cross_entropy ignores: every position not chosen for prediction.
IGNORE = -100
#: BERT's rates: of the chosen tokens 80% are masked, 10% replaced by a random token, 10% left unchanged.
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


@dataclass(frozen=True)
class SpecialIds:
    """The ids the objectives use: never chosen for masking, never drawn as a random replacement."""

    eos: int
    pad: int
    mask: int
    sentinels: tuple[int, ...]  # <extra_id_0> first, as T5's

    def all(self) -> tuple[int, ...]:
        return (self.eos, self.pad, self.mask, *self.sentinels)


def special_ids(tokenizer_path: str | Path) -> SpecialIds:
    """The special ids of a tokenizer.json; refuses one trained before the mask and sentinel tokens (it still
    serves the causal LM, which needs only EOS)."""
    vocab = load_tokenizer(tokenizer_path).get_vocab(with_added_tokens=True)
    missing = [t for t in (EOS, PAD, MASK, sentinel(0)) if t not in vocab]
    if missing:
        raise PlannerError(f"{tokenizer_path}: the tokenizer has no {', '.join(missing)}: train it again "
                           f"(`pretrain-data CONFIG tokenizer`) for the masked LM and span corruption")
    count = 0
    while sentinel(count) in vocab:
        count += 1
    return SpecialIds(vocab[EOS], vocab[PAD], vocab[MASK], tuple(vocab[sentinel(i)] for i in range(count)))


# ---- masked LM -----------------------------------------------------------------------------------------------
def _among(tokens: torch.Tensor, members: tuple[int, ...]) -> torch.Tensor:
    """Where `tokens` is one of `members`: a lookup table indexed by the tokens, a tenth of torch.isin's time
    on a busy CPU."""
    table = torch.zeros(max(int(tokens.max()), *members) + 1, dtype=torch.bool, device=tokens.device)
    table[list(members)] = True
    return table[tokens]


def _is_special(tokens: torch.Tensor, ids: SpecialIds) -> torch.Tensor:
    return _among(tokens, ids.all())


def _uniform(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Draws on the generator's device, moved to the tokens': a run's corruption does not depend on where it
    trains."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _random_ordinary(count: int, generator: torch.Generator, ids: SpecialIds, vocab: int) -> torch.Tensor:
    """`count` uniform ids below `vocab` that are not special: a draw r from the vocab - k ordinary ids, shifted
    past every special id at or below it (so no table of the whole vocabulary is built)."""
    specials = torch.tensor(sorted(i for i in set(ids.all()) if i < vocab), dtype=torch.long)
    r = torch.randint(vocab - len(specials), (count,), generator=generator, device=generator.device).cpu()
    shifted = specials - torch.arange(len(specials))
    return r + torch.searchsorted(shifted, r, right=True)


def mask_tokens(tokens: torch.Tensor, generator: torch.Generator, ids: SpecialIds, vocab: int,
                rate: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the masked LM for `tokens` [batch, seq]: labels are the original token where it was
    chosen and IGNORE elsewhere.

    Each non-special token is chosen independently with probability `rate` (a Bernoulli draw per token, as
    Hugging Face's DataCollatorForLanguageModeling does; BERT's create_pretraining_data instead takes exactly
    round(rate x length) per sequence): the count varies a little by row, the fraction over many rows is
    `rate`. Of the chosen, 80% become the mask id, 10% a uniformly drawn non-special id below `vocab` (the
    tokenizer's vocabulary), 10% stay as they are (Devlin et al. 2019, Appendix A.1: the model cannot tell
    which inputs are real, so it keeps a representation of every token)."""
    if not 0 < rate < 1:
        raise PlannerError(f"mask rate: {rate} must be in (0, 1)")
    chosen = (_uniform(tokens.shape, generator, tokens.device) < rate) & ~_is_special(tokens, ids)
    labels = torch.where(chosen, tokens, IGNORE)
    how = _uniform(tokens.shape, generator, tokens.device)  # one draw per token splits the chosen 80/10/10
    to_mask = chosen & (how < MASK_SHARE)
    to_random = chosen & (how >= MASK_SHARE) & (how < MASK_SHARE + RANDOM_SHARE)
    inputs = torch.where(to_mask, ids.mask, tokens)
    inputs[to_random] = _random_ordinary(int(to_random.sum()), generator, ids, vocab).to(tokens.device)
    return inputs, labels


def masked_fraction(tokens: torch.Tensor, labels: torch.Tensor, ids: SpecialIds) -> float:
    """Chosen tokens over the tokens that could be chosen (the non-special ones): the rate's denominator, so
    the EOS between packed documents does not pull it below `rate`."""
    eligible = ~_is_special(tokens, ids)
    return (labels != IGNORE).sum().item() / max(eligible.sum().item(), 1)


def mask_split(tokens: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
               ids: SpecialIds) -> tuple[float, float, float]:
    """(masked, random, unchanged) fractions of the chosen tokens. A random draw that hit the original token
    (1 in vocab of the 10%) reads as unchanged: it is, to the model."""
    chosen = labels != IGNORE
    n = max(chosen.sum().item(), 1)
    masked = (chosen & (inputs == ids.mask)).sum().item()
    unchanged = (chosen & (inputs == tokens)).sum().item()
    return masked / n, (n - masked - unchanged) / n, unchanged / n


# ---- span corruption -------------------------------------------------------------------------------------------
def _random_segmentation(rows: int, items: int, segments: int, generator: torch.Generator) -> torch.Tensor:
    """[rows, segments] lengths: `items` cut into `segments` non-empty runs at uniformly random places, as T5's
    `_random_segmentation` (segments - 1 cuts among the items - 1 gaps, shuffled)."""
    gaps = torch.rand(rows, items - 1, generator=generator, device=generator.device).cpu()
    cut = gaps.argsort(dim=1).argsort(dim=1) < segments - 1  # exactly segments - 1 cuts per row, uniformly placed
    segment = torch.cat([torch.zeros(rows, 1, dtype=torch.long), cut.long().cumsum(dim=1)], dim=1)
    return torch.zeros(rows, segments, dtype=torch.long).scatter_add_(1, segment, torch.ones_like(segment))


def noise_mask(rows: int, length: int, generator: torch.Generator, noise_density: float = NOISE_DENSITY,
               mean_span: float = MEAN_SPAN) -> torch.Tensor:
    """[rows, length] bools, True on noise: T5's `random_spans_noise_mask`. The counts are the planner's
    (`span_corruption_counts`); spans alternate kept, noise, kept, ... starting with kept and ending with noise."""
    noise, spans = span_corruption_counts(length, noise_density, mean_span)
    lengths = torch.stack([_random_segmentation(rows, length - noise, spans, generator),
                           _random_segmentation(rows, noise, spans, generator)], dim=2).reshape(rows, 2 * spans)
    starts = lengths.cumsum(dim=1)[:, :-1]  # where each span after the first begins
    flips = torch.zeros(rows, length, dtype=torch.long).scatter_(1, starts, 1)
    return flips.cumsum(dim=1) % 2 == 1


def _spans_to_sentinels(tokens: torch.Tensor, spans: torch.Tensor, sentinels: torch.Tensor,
                        eos: int) -> torch.Tensor:
    """Each run of `spans` replaced by one sentinel (the i-th run by sentinel i), then EOS: T5's
    `noise_span_to_unique_sentinel`. Every row keeps as many tokens, so the result stacks."""
    before = torch.nn.functional.pad(spans[:, :-1], (1, 0))
    first = spans & ~before
    index = (first.long().cumsum(dim=1) - 1).clamp(min=0)
    out = torch.where(first, sentinels[index], tokens)
    kept = out[~(spans & before)].view(tokens.shape[0], -1)
    return torch.cat([kept, torch.full((tokens.shape[0], 1), eos, dtype=tokens.dtype)], dim=1)


def span_corrupt(tokens: torch.Tensor, generator: torch.Generator, ids: SpecialIds,
                 noise_density: float = NOISE_DENSITY, mean_span: float = MEAN_SPAN,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of T5's span corruption for `tokens` [batch, raw]: inputs are the kept tokens with one
    sentinel per noise span, then EOS; targets are, per span, its sentinel and its tokens, then EOS.

    The lengths are the same for every row (T5's design, so batches stack) and equal the planner's:
    raw = `span_corruption_raw_length(inputs)` gives `span_corruption_lengths(inputs)` (512 inputs: 568
    raw tokens, 114 targets). The i-th noise span gets sentinel i in both, so targets read <extra_id_0> span0
    <extra_id_1> span1 ... <EOS> (nonnoise_span_to_unique_sentinel)."""
    rows, length = tokens.shape
    if not 0 < noise_density < 1 or mean_span < 1:
        raise PlannerError(f"span corruption: noise density {noise_density} must be in (0, 1) and mean span "
                           f"length {mean_span} at least 1")
    noise, spans = span_corruption_counts(length, noise_density, mean_span)
    if spans > len(ids.sentinels):
        raise PlannerError(f"span corruption: {length} raw tokens take {spans} noise spans but the tokenizer has "
                           f"{len(ids.sentinels)} sentinels (tokenizer.sentinels, or a shorter sequence)")
    if spans > min(noise, length - noise):
        raise PlannerError(f"span corruption: {length} raw tokens are too few for {spans} noise spans")
    mask = noise_mask(rows, length, generator, noise_density, mean_span).to(tokens.device)
    sentinels = torch.tensor(ids.sentinels, dtype=tokens.dtype, device=tokens.device)
    return (_spans_to_sentinels(tokens, mask, sentinels, ids.eos),
            _spans_to_sentinels(tokens, ~mask, sentinels, ids.eos))


def span_stats(inputs: torch.Tensor, targets: torch.Tensor, ids: SpecialIds) -> tuple[float, float]:
    """(noise density, mean span length) of a corrupted batch, read off its inputs and targets: spans are the
    sentinels in the inputs, noise tokens the targets' tokens but sentinels and the closing EOS, kept tokens the
    inputs' tokens but sentinels and EOS."""
    spans = _among(inputs, ids.sentinels).sum().item()
    if spans != _among(targets, ids.sentinels).sum().item():
        raise PlannerError("span corruption: inputs and targets hold different numbers of sentinels")
    noise = targets.numel() - spans - targets.shape[0]
    kept = inputs.numel() - spans - inputs.shape[0]
    return noise / (noise + kept), noise / max(spans, 1)
