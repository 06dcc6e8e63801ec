"""planner.memory.activations against what our encoder and encoder-decoder save for backward (saved-tensor hooks).

As tests/test_activations.py does for the decoder: one forward with its loss under the counter, on fake tensors
(FakeTensorMode: base-sized layers in milliseconds) and once on real ones, against the planner's layers and output
layer for the same shape, micro-batch and precision regime. The batches are what training feeds: token ids and
their own labels (MLM), encoder inputs and distinct targets (span corruption). Exact to the byte but for the 4-byte
scalar loss.
"""

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from planner.core.schema import ModelConfig
from planner.memory import activations
from planner.model.shapes import shape_of
from pretrain.encoder import Encoder
from pretrain.encoder_decoder import EncoderDecoder
from pretrain.memory_probe import SavedTensorCounter

VOCAB = 1000
DTYPES = {"16bit": torch.bfloat16, "fp32": torch.float32, "autocast": torch.float32}
LOSS_BYTES = 4  # the fp32 scalar loss the last op keeps


def measured_and_predicted(cfg: ModelConfig, b: int, regime: str = "16bit", fake: bool = True):
    shape = shape_of(cfg)
    with FakeTensorMode() if fake else contextlib.nullcontext():
        torch.set_default_dtype(DTYPES[regime])
        try:
            model = (Encoder if cfg.arch == "encoder" else EncoderDecoder)(cfg)
        finally:
            torch.set_default_dtype(torch.float32)
        inputs = torch.randint(0, cfg.vocab, (b, cfg.seq_len))
        targets = torch.randint(0, cfg.vocab, (b, shape.n_target_len))  # the labels: a tensor of their own
        counter = SavedTensorCounter(model)
        with counter.count(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=regime == "autocast"):
            model(inputs, targets)
    predicted = activations.stored_bytes(shape, b, regime=regime) + activations.head_bytes(shape, b, regime)
    return counter.bytes, predicted


def encoder(h, s, layers=2, heads=None, **kw):
    return ModelConfig(arch="encoder", layers=layers, hidden=h, heads=heads or h // 64, vocab=VOCAB, seq_len=s, **kw)


def seq2seq(h, s, layers=2, heads=None, **kw):
    return ModelConfig(arch="encoder-decoder", layers=layers, hidden=h, heads=heads or h // 64, vocab=VOCAB,
                       seq_len=s, **kw)


ENCODERS = [encoder(256, 128), encoder(512, 512, token_types=2), encoder(768, 512, layers=3, token_types=2,
            tied_embeddings=True, max_positions=1024), encoder(1024, 256, ffn_hidden=2048), encoder(2048, 128)]
SEQ2SEQ = [seq2seq(256, 128), seq2seq(512, 512, decoder_layers=3), seq2seq(768, 512, tied_embeddings=True),
           seq2seq(512, 256, mlp="geglu", ffn_hidden=1024), seq2seq(1024, 128, heads=8, head_dim=64),
           seq2seq(2048, 256, layers=1, decoder_layers=2, mlp="geglu")]


def name(cfg):
    return f"{cfg.layers}x{cfg.hidden}-s{cfg.seq_len}-{cfg.mlp or 'default'}"


@pytest.mark.parametrize("cfg", ENCODERS, ids=name)
@pytest.mark.parametrize("b", [1, 3])
def test_encoder_activations_equal_the_saved_bytes_of_our_encoder(cfg, b):
    measured, predicted = measured_and_predicted(cfg, b)
    assert measured == predicted + LOSS_BYTES


@pytest.mark.parametrize("cfg", SEQ2SEQ, ids=name)
@pytest.mark.parametrize("b", [1, 3])
def test_encoder_decoder_activations_equal_the_saved_bytes_of_our_encoder_decoder(cfg, b):
    measured, predicted = measured_and_predicted(cfg, b)
    assert measured == predicted + LOSS_BYTES


@pytest.mark.parametrize("regime", ["fp32", "autocast"])
@pytest.mark.parametrize("cfg", [encoder(256, 128, token_types=2), seq2seq(256, 128, decoder_layers=3),
                                 seq2seq(256, 64, mlp="geglu", ffn_hidden=512, tied_embeddings=True)], ids=name)
def test_fp32_and_autocast_regimes_equal_the_saved_bytes(cfg, regime):
    # real tensors: under autocast the fake LayerNorm keeps its statistics in bf16 where the CPU kernel keeps fp32
    measured, predicted = measured_and_predicted(cfg, 2, regime, fake=False)
    assert measured == predicted + LOSS_BYTES


@pytest.mark.parametrize("cfg", [encoder(128, 64, token_types=2), seq2seq(128, 64, mlp="geglu")], ids=name)
def test_fake_tensor_count_equals_the_real_tensor_count(cfg):
    assert measured_and_predicted(cfg, 2, fake=False) == measured_and_predicted(cfg, 2, fake=True)


@pytest.mark.parametrize("preset", ["bert-base-uncased", "t5-base"])
def test_base_sized_models_keep_what_the_planner_counts(preset):
    # bert-base (12 x 768, 512 positions) and t5-base (12 + 12 x 768, 512 inputs, 114 targets), micro-batch 8:
    # 1,742,376,964 and 2,093,551,684 bytes measured (1.62 and 1.95 GiB), each the planner's + 4
    from tests.test_objective_models import BERT_BASE, T5_BASE

    measured, predicted = measured_and_predicted(BERT_BASE if preset.startswith("bert") else T5_BASE, 8)
    assert measured == predicted + LOSS_BYTES
