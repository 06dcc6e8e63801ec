"""planner.memory.activations against what pretrain.model really saves for backward (saved-tensor hooks).

Each case builds our model (2 layers), runs one forward with its loss under the counter, and
compares the distinct saved storages with the planner's prediction for the same shape, micro-batch,
precision regime and checkpointing. FakeTensorMode makes h = 2048, s = 2048 cost milliseconds; one
case runs on real tensors to show the fake count is the real one.
"""

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from planner.core.schema import ModelConfig
from planner.memory import activations
from planner.model.shapes import shape_of
from pretrain.memory_probe import SavedTensorCounter
from pretrain.model import Transformer

VOCAB, LAYERS = 1000, 2
DTYPES = {"16bit": torch.bfloat16, "fp32": torch.float32, "autocast": torch.float32}


def measured_and_predicted(h, s, b, gqa=False, checkpointing="none", regime="16bit", fake=True):
    heads = h // (128 if h >= 1024 else 64)
    cfg = ModelConfig(layers=LAYERS, hidden=h, heads=heads, kv_heads=heads // 4 if gqa else None, vocab=VOCAB,
                      seq_len=s)
    with FakeTensorMode() if fake else contextlib.nullcontext():
        torch.set_default_dtype(DTYPES[regime])
        try:
            model = Transformer(cfg, activation_checkpointing=checkpointing == "full")
        finally:
            torch.set_default_dtype(torch.float32)
        tokens = torch.randint(0, VOCAB, (b, s))
        counter = SavedTensorCounter(model)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=regime == "autocast")
        with counter.count(), autocast:
            model(tokens, tokens)
    shape = shape_of(cfg)
    predicted = activations.stored_bytes(shape, b, regime=regime, checkpointing=checkpointing) \
        + activations.head_bytes(shape, b, regime)
    return counter.bytes, predicted


@pytest.mark.parametrize("h, s, b, gqa, checkpointing", [
    (256, 128, 1, False, "none"), (256, 2048, 4, True, "none"), (512, 512, 2, False, "none"),
    (512, 128, 4, True, "full"), (1024, 1024, 1, True, "none"), (1024, 2048, 2, False, "full"),
    (2048, 2048, 1, False, "none"), (2048, 512, 4, True, "none"), (2048, 2048, 2, True, "full"),
    (2048, 128, 2, False, "full"), (256, 512, 2, True, "full"), (1024, 128, 4, False, "none"),
])
def test_predicted_activations_match_saved_bytes_of_our_model(h, s, b, gqa, checkpointing):
    measured, predicted = measured_and_predicted(h, s, b, gqa, checkpointing)
    assert predicted == pytest.approx(measured, rel=0.05)
    assert predicted == pytest.approx(measured, abs=64)  # in fact exact but for the 4-byte scalar loss


@pytest.mark.parametrize("regime", ["fp32", "autocast"])
def test_fp32_and_autocast_regimes_match_saved_bytes(regime):
    measured, predicted = measured_and_predicted(512, 256, 2, regime=regime)
    assert predicted == pytest.approx(measured, rel=0.01)


def test_fake_tensor_count_equals_the_real_tensor_count():
    assert measured_and_predicted(256, 128, 2, fake=False) == measured_and_predicted(256, 128, 2, fake=True)


def test_korthikantis_34_sbh_undercounts_our_block_by_a_third():
    # Measured with saved-tensor hooks and kept as a spec: our bf16 LLaMA block saves 52-54 bytes per s*b*h,
    # not Korthikanti et al. 2022's 34 (eq. 1, for GPT-3 blocks).
    shape = shape_of(ModelConfig(layers=1, hidden=2048, heads=16, vocab=VOCAB, seq_len=1024))
    per_sbh = activations.per_layer_bytes(shape, 1) / (1024 * 2048)
    assert 52 <= per_sbh <= 54
