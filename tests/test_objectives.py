"""The objectives' inputs (issue 28): BERT's masked LM and T5's span corruption, as `pretrain.data.objectives`
draws them, and the tokenizer's special tokens they need. The last tests measure the collators on real
shards (the shipped finance + general sample, curated, tokenized and packed by the pipeline) against the
papers' targets."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from planner.core.errors import PlannerError
from planner.model.shapes import span_corruption_counts, span_corruption_lengths, span_corruption_raw_length
from pretrain.data.config import load_pipeline_config
from pretrain.data.mix import pack
from pretrain.data.objectives import (
    IGNORE,
    SpecialIds,
    mask_split,
    mask_tokens,
    masked_fraction,
    span_corrupt,
    span_stats,
    special_ids,
)
from pretrain.data.shards import PackedBatches, TokenShards
from pretrain.data.tokenizer import EOS, PAD, train_tokenizer
from tests.conftest import pack_sample

REPO = Path(__file__).resolve().parents[1]
#: A made-up tokenizer's ids for the unit tests: EOS 0, PAD 1, mask 2, 100 sentinels 3..102.
IDS = SpecialIds(eos=0, pad=1, mask=2, sentinels=tuple(range(3, 103)))
VOCAB = 1000
#: Inputs of 128 tokens (the demo's sequence) take 141 raw tokens: 21 noise tokens in 7 spans of mean 3.0.
INPUTS = 128
RAW = span_corruption_raw_length(INPUTS)


def ordinary(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(len(IDS.all()), VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def restore(inputs: list[int], targets: list[int], ids: SpecialIds) -> list[int]:
    """The raw tokens back from a corrupted row: each sentinel in the inputs replaced by the tokens that follow
    the same sentinel in the targets (the closing EOS of each dropped)."""
    number = {s: i for i, s in enumerate(ids.sentinels)}
    spans: dict[int, list[int]] = {}
    for token in targets[:-1]:
        if token in number:
            current = spans.setdefault(number[token], [])
        else:
            current.append(token)
    out: list[int] = []
    for token in inputs[:-1]:
        out.extend(spans[number[token]] if token in number else [token])
    return out


# ---- span corruption ------------------------------------------------------------------------------------------
def test_span_corruption_lengths_are_the_planners_512_inputs_568_raw_114_targets():
    assert span_corruption_raw_length(512) == 568
    inputs, targets = span_corrupt(ordinary(2, 568), seeded(), IDS)
    assert inputs.shape == (2, 512) and targets.shape == (2, 114) == (2, span_corruption_lengths(512)[1])


@pytest.mark.parametrize("planned_inputs", [3, 4, 10, 64, 128, 129, 300, 1024, 1800])
def test_every_row_has_the_planned_lengths_so_batches_stack(planned_inputs):
    raw = span_corruption_raw_length(planned_inputs)
    inputs, targets = span_corrupt(ordinary(5, raw), seeded(), IDS)
    assert (inputs.shape[1], targets.shape[1]) == span_corruption_lengths(planned_inputs)
    assert inputs.shape[1] == planned_inputs


@pytest.mark.parametrize("raw", [2, 3, 11, RAW, 568, 2000])
def test_inputs_and_targets_give_back_the_raw_tokens_exactly(raw):
    tokens = ordinary(16, raw, seed=raw)
    inputs, targets = span_corrupt(tokens, seeded(raw), IDS)
    for row in range(16):
        assert restore(inputs[row].tolist(), targets[row].tolist(), IDS) == tokens[row].tolist()


def test_each_span_gets_the_next_sentinel_in_both_and_both_end_with_eos():
    inputs, targets = span_corrupt(ordinary(8, RAW), seeded(), IDS)
    spans = span_corruption_counts(RAW)[1]
    for row_in, row_out in zip(inputs.tolist(), targets.tolist(), strict=True):
        assert [t for t in row_in if t in IDS.sentinels] == list(IDS.sentinels[:spans])
        assert [t for t in row_out if t in IDS.sentinels] == list(IDS.sentinels[:spans])
        assert row_out[0] == IDS.sentinels[0]  # the text starts with a kept span, so targets start with <extra_id_0>
        assert row_in[-1] == row_out[-1] == IDS.eos


def test_spans_fall_in_different_places_in_each_row():
    inputs, _ = span_corrupt(ordinary(1, RAW).repeat(64, 1), seeded(), IDS)
    where = {tuple(torch.isin(row, torch.tensor(IDS.sentinels)).nonzero().flatten().tolist()) for row in inputs}
    assert len(where) == 64


def test_span_lengths_follow_t5s_random_segmentation():
    # T5 cuts n noise tokens into s non-empty spans at s - 1 of the n - 1 gaps chosen uniformly: a span is k
    # long with probability C(n - k - 1, s - 2) / C(n - 1, s - 1) (21 tokens in 7 spans: 1 in 30%, 3 in 16%)
    _, targets = span_corrupt(ordinary(20_000, RAW), seeded(), IDS)  # 140k spans: sampling alone gives ~0.003
    noise, spans = span_corruption_counts(RAW)
    starts = [i for i, t in enumerate(targets[0].tolist()) if t in IDS.sentinels]
    assert len(starts) == spans
    is_sentinel = torch.zeros(VOCAB, dtype=torch.bool)
    is_sentinel[list(IDS.sentinels)] = True
    where = is_sentinel[targets].nonzero()[:, 1].view(-1, spans)
    lengths = torch.diff(torch.cat([where, torch.full((len(where), 1), targets.shape[1] - 1)], dim=1)) - 1
    measured = torch.bincount(lengths.flatten(), minlength=noise).double() / lengths.numel()
    expected = [math.comb(noise - k - 1, spans - 2) / math.comb(noise - 1, spans - 1) if k else 0.0
                for k in range(len(measured))]
    assert lengths.double().mean() == pytest.approx(noise / spans)
    # total variation distance; geometric lengths of mean 3 (another reading of "mean span 3") are 0.05 away
    assert 0.5 * sum(abs(m - e) for m, e in zip(measured.tolist(), expected, strict=True)) < 0.01


def test_span_corruption_refuses_rows_needing_more_sentinels_than_the_tokenizer_has():
    few = SpecialIds(eos=0, pad=1, mask=2, sentinels=(3, 4))
    with pytest.raises(PlannerError, match="7 noise spans but the tokenizer has 2 sentinels"):
        span_corrupt(ordinary(1, RAW), seeded(), few)


# ---- masked LM ------------------------------------------------------------------------------------------------
def test_special_ids_are_never_chosen_nor_drawn_as_random_replacements():
    tokens = ordinary(64, 256)
    tokens[:, ::2] = torch.tensor(IDS.all()).repeat(64 * 128 // len(IDS.all()) + 1)[: 64 * 128].view(64, 128)
    inputs, labels = mask_tokens(tokens, seeded(), IDS, VOCAB, rate=0.9)
    special = torch.isin(tokens, torch.tensor(IDS.all()))
    assert (labels[special] == IGNORE).all() and (inputs[special] == tokens[special]).all()
    replaced = (inputs != tokens) & (inputs != IDS.mask)
    assert replaced.sum() > 500 and not torch.isin(inputs[replaced], torch.tensor(IDS.all())).any()
    assert inputs.max() < VOCAB


def test_labels_are_ignore_exactly_where_a_token_was_not_chosen():
    tokens = ordinary(64, 256)
    inputs, labels = mask_tokens(tokens, seeded(), IDS, VOCAB)
    chosen = labels != IGNORE
    assert (labels[chosen] == tokens[chosen]).all()  # a chosen position's label is its original token
    assert chosen[inputs != tokens].all()  # every changed input is chosen, so carries a label
    assert not (inputs[~chosen] != tokens[~chosen]).any()  # and nothing unchosen changes


def test_the_corruption_is_the_same_under_the_same_seed_and_differs_under_another():
    tokens = ordinary(8, RAW)
    assert all(torch.equal(a, b) for a, b in zip(mask_tokens(tokens, seeded(1), IDS, VOCAB),
                                                 mask_tokens(tokens, seeded(1), IDS, VOCAB), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(span_corrupt(tokens, seeded(1), IDS),
                                                 span_corrupt(tokens, seeded(1), IDS), strict=True))
    assert not torch.equal(mask_tokens(tokens, seeded(2), IDS, VOCAB)[1], mask_tokens(tokens, seeded(1), IDS, VOCAB)[1])
    assert not torch.equal(span_corrupt(tokens, seeded(2), IDS)[0], span_corrupt(tokens, seeded(1), IDS)[0])


# ---- the tokenizer --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The shipped sample, its tokenizer trained (2,048 tokens, the sample config's) and packed into rows of RAW
    tokens: the real shards the collators are measured on."""
    return pack_sample(tmp_path_factory.mktemp("objectives"), RAW)


def test_the_tokenizer_keeps_eos_and_pad_first_and_appends_the_mask_and_100_sentinels(sample):
    ids = special_ids(sample / "tokenizer.json")
    assert (ids.eos, ids.pad, ids.mask) == (0, 1, 2) and ids.sentinels == tuple(range(3, 103))
    manifest = json.loads((sample / "shards/train/manifest.json").read_text())
    assert manifest["vocab_size"] == 2048  # the specials are inside vocab_size, as BERT's [MASK] is


def test_a_small_vocabulary_keeps_as_many_sentinels_as_leave_the_alphabet_room(sample, tmp_path):
    cfg = load_pipeline_config(REPO / "configs/data-sample.yaml",
                               [f"out_dir={sample}", "tokenizer.vocab_size=300", "tokenizer.path=small.json"])
    ids = special_ids(train_tokenizer(cfg))
    assert len(ids.sentinels) == 40 and (ids.eos, ids.pad) == (0, 1)


def test_more_sentinels_than_the_vocabulary_has_room_for_are_refused_in_one_line():
    with pytest.raises(PlannerError, match=r"^tokenizer.sentinels: 300 must be an integer of at least 0 and at most 252$"):
        load_pipeline_config(REPO / "configs/data-sample.yaml", ["tokenizer.vocab_size=512", "tokenizer.sentinels=300"])


def test_a_tokenizer_from_before_the_objectives_still_packs_for_the_causal_lm_but_is_refused_for_them(
        sample, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    old = Tokenizer(models.BPE())
    old.pre_tokenizer, old.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    old.train_from_iterator(["an old corpus"], trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    shutil.copytree(sample / "curated", tmp_path / "curated")
    shutil.copy(sample / "curation_report.json", tmp_path)
    old.save(str(tmp_path / "tokenizer.json"))
    cfg = load_pipeline_config(REPO / "configs/data-sample.yaml", [f"out_dir={tmp_path}", "tokenizer.vocab_size=300"])
    pack(cfg)
    assert TokenShards.open(tmp_path / "shards/train").typed.eos_id == 0
    with pytest.raises(PlannerError) as refused:
        special_ids(tmp_path / "tokenizer.json")
    assert str(refused.value).startswith(f"{tmp_path / 'tokenizer.json'}: the tokenizer has no <mask>")
    assert "\n" not in str(refused.value)


# ---- the collators measured on real shards --------------------------------------------------------------------
#: Every figure must be within 1% (relative) of its target. The masked LM draws per token, so the tokens are
#: enough that 1% of the smallest share (the 10% random) is over 4 standard deviations: 1.5M chosen tokens.
TOLERANCE, CHOSEN = 0.01, 1_500_000


def test_the_masked_lm_chooses_15_percent_and_splits_them_80_10_10_on_real_shards(sample):
    ids = special_ids(sample / "tokenizer.json")
    shards = TokenShards.open(sample / "shards/train")
    batches, generator = PackedBatches(shards, micro_batch=512), seeded(28)
    special = torch.zeros(shards.vocab_size, dtype=torch.bool)
    special[list(ids.all())] = True
    eligible = chosen = 0
    shares = [0.0, 0.0, 0.0]  # chosen tokens masked, randomised, unchanged
    while chosen < CHOSEN:
        tokens, _ = batches.next()
        inputs, labels = mask_tokens(tokens, generator, ids, shards.vocab_size)
        here = int((~special[tokens]).sum())
        n = round(masked_fraction(tokens, labels, ids) * here)
        shares = [total + share * n for total, share in zip(shares, mask_split(tokens, inputs, labels, ids),
                                                            strict=True)]
        eligible, chosen = eligible + here, chosen + n
    measured = {"chosen": chosen / eligible, **{k: v / chosen for k, v in zip(("mask", "random", "unchanged"),
                                                                              shares, strict=True)}}
    targets = {"chosen": 0.15, "mask": 0.8, "random": 0.1, "unchanged": 0.1}
    print(f"\nmasked LM on {eligible:,} real tokens ({batches.epoch + 1} passes over {shards.path}): " +
          ", ".join(f"{k} {v:.4f} ({v / targets[k] - 1:+.2%})" for k, v in measured.items()))
    assert math.sqrt(0.1 * 0.9 / chosen) * 4 < TOLERANCE * 0.1  # the sample is large enough to tell
    for name, target in targets.items():
        assert measured[name] == pytest.approx(target, rel=TOLERANCE), name


@pytest.mark.parametrize("planned_inputs", [INPUTS, 512])
def test_span_corruption_drops_15_percent_in_spans_of_mean_3_on_real_shards(sample, planned_inputs):
    # rows of the real token stream, RAW (the shards' rows) or 568 (T5's 512 inputs) tokens long
    ids = special_ids(sample / "tokenizer.json")
    shards = TokenShards.open(sample / "shards/train")
    stream = torch.cat([torch.from_numpy(shards.row(i).astype("int64")) for i in range(len(shards))])
    raw = span_corruption_raw_length(planned_inputs)
    rows = stream[: len(stream) // raw * raw].view(-1, raw)
    inputs, targets = span_corrupt(rows, seeded(28), ids)
    density, mean_span = span_stats(inputs, targets, ids)
    noise, spans = span_corruption_counts(raw)
    print(f"\nspan corruption of {rows.numel():,} real tokens in rows of {raw} ({planned_inputs} inputs, "
          f"{targets.shape[1]} targets): noise density {density:.4f}, mean span {mean_span:.4f} "
          f"({noise} noise tokens in {spans} spans a row)")
    assert (density, mean_span) == (noise / raw, noise / spans)  # what the planner counts, in every row
    assert all(restore(i, t, ids) == r for i, t, r in zip(inputs.tolist(), targets.tolist(), rows.tolist(),
                                                          strict=True))
    assert density == pytest.approx(0.15, rel=TOLERANCE)
    if planned_inputs == 512:  # T5's own rounding: 85 noise tokens in round(85 / 3) = 28 spans, 1.2% over 3
        assert mean_span == pytest.approx(85 / 28)
    else:
        assert mean_span == pytest.approx(3.0, rel=TOLERANCE)
