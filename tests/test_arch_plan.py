"""Encoder-only (BERT) and encoder-decoder (T5) models in the planner (issue 28): counts against the published
ones, FLOPs per position, the objective checked against the architecture, and the decoder-only laws, memory
terms and trainer refused in one line where they do not apply."""

import json
from dataclasses import replace

import pytest

from planner.cli import main
from planner.compute import flops
from planner.memory import activations
from planner.model.hf_config import SHIPPED, shape_from_hf
from planner.model.presets import get_preset
from planner.model.shapes import ModelShape, shape_of, span_corruption_lengths

#: transformers' num_parameters() for each class, built from the published config.json (checked with
#: transformers 5.25 on the meta device).
BERT_MODEL_WITH_POOLER = 109_482_240  # BertModel (the paper's "110M")
BERT_FOR_MASKED_LM = 109_514_298  # BertModel less the pooler (590,592) plus the MLM head (622,650)
BERT_FOR_PRETRAINING = 110_106_428  # pooler, MLM head and the next-sentence head (1,538)
T5_BASE = 222_903_552  # T5ForConditionalGeneration, lm_head tied to the shared embedding


def bert() -> ModelShape:
    return shape_from_hf(SHIPPED / "bert-base-uncased.json")


def t5() -> ModelShape:
    return shape_from_hf(SHIPPED / "t5-base.json")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- counts ----------------------------------------------------------------------------------------------
def test_bert_base_uncased_preset_is_bert_for_masked_lm_to_the_parameter():
    assert get_preset("bert-base-uncased").shape.param_count() == BERT_FOR_MASKED_LM


def test_bert_base_with_the_pooler_and_no_head_is_the_published_bert_model_count():
    assert replace(bert(), encoder_head="pooler").param_count() == BERT_MODEL_WITH_POOLER


def test_bert_for_pretraining_adds_the_pooler_and_the_next_sentence_head():
    assert replace(bert(), encoder_head="pretraining").param_count() == BERT_FOR_PRETRAINING


def test_bert_config_naming_bert_model_plans_the_pooler(tmp_path):
    cfg = json.loads((SHIPPED / "bert-base-uncased.json").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
    assert shape_from_hf(path).param_count() == BERT_MODEL_WITH_POOLER


def test_t5_base_preset_is_t5_for_conditional_generation_to_the_parameter():
    assert get_preset("t5-base").shape.param_count() == T5_BASE


def test_t5_relative_bias_is_one_table_per_stack():
    assert t5().position_params() == 2 * 32 * 12


def test_untied_t5_adds_its_lm_head():
    assert replace(t5(), tied_embeddings=False).param_count() == T5_BASE + 32128 * 768


def test_gated_gelu_t5_has_three_mlp_matrices():
    shape = replace(t5(), mlp="geglu", ffn_hidden=2048)
    assert shape.mlp_params() == 3 * 768 * 2048


def test_bert_shorter_sequences_keep_the_512_position_table():
    assert replace(bert(), seq_len=128).param_count() == BERT_FOR_MASKED_LM


def test_a_decoder_shape_dict_is_unchanged_by_the_new_fields():
    assert "arch" not in get_preset("llama2-7b").shape.to_dict()


# ---- span corruption split ---------------------------------------------------------------------------------
def test_span_corruption_of_512_inputs_has_114_targets_as_t5():
    assert span_corruption_lengths(512) == (512, 114)


def test_t5_preset_plans_512_inputs_and_114_targets():
    shape = t5()
    assert (shape.seq_len, shape.n_target_len) == (512, 114)


# ---- FLOPs -------------------------------------------------------------------------------------------------
def test_mlm_flops_per_position_are_6n_plus_full_attention():
    shape = bert()
    expected = 6 * BERT_FOR_MASKED_LM + 12 * 12 * 768 * 512
    assert flops.model_flops_per_token(shape.param_count(), shape) == expected


def test_the_pooler_runs_once_per_sequence():
    shape = replace(bert(), encoder_head="pretraining")
    once = 768 * 768 + 768 + 2 * 768 + 2
    assert flops.active_params(shape.param_count(), shape) == pytest.approx(BERT_FOR_PRETRAINING - once + once / 512)


def test_encoder_decoder_flops_per_token_carry_the_targets_on_the_inputs():
    # a token is an input position (T5's count, and the planner's tokens per step): the sequence's FLOPs over 512
    shape = t5()
    s_in, s_tgt, h = 512, 114, 768
    enc_block, dec_block, cross_kv = 7_079_424, 9_439_488, 2 * h * h
    per_input = 6 * 12 * (enc_block + cross_kv) + 12 * 12 * h * s_in
    per_target = 6 * (12 * (dec_block - cross_kv) + 32128 * h) + 12 * 12 * h * (s_tgt + s_in)
    expected = (s_in * per_input + s_tgt * per_target) / s_in
    assert flops.model_flops_per_token(shape.param_count(), shape) == pytest.approx(expected)


def test_encoder_decoder_counts_fewer_matmul_weights_per_token_than_its_parameters():
    shape = t5()  # no token passes the whole embedding, and a target token skips the encoder
    assert flops.active_params(shape.param_count(), shape) < 0.6 * T5_BASE


def test_target_len_sets_the_split():
    from planner.plan.request import EstimateRequest, resolve_model

    assert resolve_model(EstimateRequest(model="t5-base", target_len=128)).shape.n_target_len == 128


# ---- flags -------------------------------------------------------------------------------------------------
def test_bert_estimate_with_tokens_runs_and_reports_the_mlm_count(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "bert-base-uncased", "--tokens", "1e9", "--json")
    result = json.loads(out)
    assert code == 0 and result["params"] == BERT_FOR_MASKED_LM and result["model"]["arch"] == "encoder"


def test_an_objective_that_is_not_the_architectures_is_one_line(capsys):
    code, _, err = run(capsys, "estimate", "--model", "bert-base-uncased", "--objective", "clm", "--tokens", "1e9")
    assert code == 2 and err.count("\n") == 1 and "trains with mlm" in err


def test_an_arch_that_is_not_the_models_is_one_line(capsys):
    code, _, err = run(capsys, "estimate", "--model", "t5-base", "--arch", "decoder", "--tokens", "1e9")
    assert code == 2 and "is an encoder-decoder model" in err


def test_target_len_on_an_encoder_is_refused(capsys):
    code, _, err = run(capsys, "estimate", "--model", "bert-base-uncased", "--target-len", "64", "--tokens", "1e9")
    assert code == 2 and "--target-len" in err


def test_params_alone_cannot_infer_an_encoder(capsys):
    code, _, err = run(capsys, "estimate", "--params", "1e9", "--arch", "encoder")
    assert code == 2 and "--params" in err


def test_shape_flags_build_an_encoder(capsys):
    code, out, _ = run(capsys, "estimate", "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "100",
                       "--arch", "encoder", "--objective", "mlm", "--tokens", "1e6", "--json")
    assert code == 0 and json.loads(out)["model"]["arch"] == "encoder"


@pytest.mark.parametrize("arch", ["encoder", "encoder-decoder"])
def test_shape_flags_plan_the_block_the_trainer_builds_for_the_architecture(capsys, tmp_path, arch):
    # BERT's (post-LN, biases, GeLU, learned positions, the MLM head) and T5's (its default MLP, ReLU), which emit
    # writes and the trainer builds to the parameter
    from planner.core.schema import load_config
    from pretrain.engines.base import model_class

    code, _, err = run(capsys, "emit", "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "100",
                       "--seq-len", "64", "--arch", arch, "--tokens", "1e9", "--out", str(tmp_path))
    assert code == 0, err
    plan = json.loads((tmp_path / "plan.json").read_text())
    model = load_config(str(tmp_path / "run.yaml"), ["data.train=x"]).model
    assert model_class(model)(model).param_count() == plan["model"]["shape_params"]


# ---- laws --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["bert-base-uncased", "t5-base"])
def test_default_tokens_are_refused_for_non_decoders(capsys, model):
    code, _, err = run(capsys, "estimate", "--model", model)
    assert code == 2 and "fitted on decoder-only models" in err


@pytest.mark.parametrize("arch", ["encoder", "encoder-decoder"])
def test_optimal_refuses_non_decoders(capsys, arch):
    code, _, err = run(capsys, "optimal", "--flops", "1e20", "--arch", arch)
    assert code == 2 and "fitted on decoder-only models" in err


# ---- memory ------------------------------------------------------------------------------------------------
def test_bert_blocks_keep_our_encoders_terms_not_korthikantis():
    # our encoder has no dropout: 32·h + 4·heads + 8 bytes per token in 16-bit with f = 4h (derivation and the
    # saved-tensor count in tests/test_objective_activations.py), not Korthikanti's 34·h + 5·heads·s
    shape = bert()
    per_token = sum(t.bytes for t in activations.layer_terms(shape))
    assert per_token == 32 * shape.hidden + 4 * shape.heads + 8


def test_bert_head_keeps_ids_labels_embedding_norm_mlm_head_and_log_softmax():
    a, h, v = 2, 768, 30522
    assert activations.head_bytes_per_token(bert()) == 3 * 8 + a * (h + 2) + 4 * a * h + 2 * a + 4 * v


def test_encoder_decoder_estimate_prints_its_activations(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "t5-base", "--tokens", "1e9", "--json")
    assert code == 0 and json.loads(out)["memory_per_moment_bytes"]["backward-start"]["activations"] > 0


# ---- trainer -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["bert-base-uncased", "t5-base"])
def test_verify_measures_decoders_only(capsys, model):
    code, _, err = run(capsys, "verify", "--model", model, "--tokens", "1e9")
    assert code == 2 and "verify measures decoders" in err and err.count("\n") == 1


@pytest.mark.parametrize("model, objective", [("bert-base-uncased", "mlm"), ("t5-base", "span-corruption")])
def test_emit_writes_the_trainers_encoder_and_encoder_decoder(capsys, tmp_path, model, objective):
    from planner.core.schema import load_config

    code, _, _ = run(capsys, "emit", "--model", model, "--tokens", "1e9", "--fsdp", "full", "--out", str(tmp_path))
    cfg = load_config(tmp_path / "run.yaml")
    planned = get_preset(model).shape
    assert code == 0 and cfg.train.objective == objective and cfg.model.arch == planned.arch
    assert shape_of(cfg.model).param_count() == planned.param_count()


@pytest.mark.parametrize("flags, named", [
    (["--model", "t5-base", "--fsdp", "full", "--tp", "2"], "--tp"),  # t5-base ties its head to its embedding
    (["--model", "t5-base", "--fsdp", "full", "--ep", "2", "--gpus", "4"], "--ep"),
    (["--model", "bert-base-uncased", "--fsdp", "full", "--checkpointing", "full"], "--checkpointing"),
    (["--model", "t5-base", "--target-len", "100"], "--target-len"),
])
def test_emit_refuses_what_the_trainer_does_not_run_for_non_decoders(capsys, tmp_path, flags, named):
    code, _, err = run(capsys, "emit", *flags, "--tokens", "1e9", "--out", str(tmp_path))
    assert code == 2 and named in err and err.count("\n") == 1


TINY_UNTIED = {
    "encoder": {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 64, "num_hidden_layers": 4,
                "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": 300, "max_position_embeddings": 64,
                "type_vocab_size": 2, "tie_word_embeddings": False},
    "encoder-decoder": {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": 64,
                        "num_layers": 2, "num_decoder_layers": 3, "num_heads": 4, "d_kv": 16, "d_ff": 256,
                        "vocab_size": 300, "feed_forward_proj": "relu", "tie_word_embeddings": False}}


@pytest.mark.parametrize("arch", TINY_UNTIED)
@pytest.mark.parametrize("layout", [["--tp", "2"], ["--pp", "2", "--pp-schedule", "interleaved-1f1b", "--pp-virtual",
                                                    "2", "--tp", "2", "--gpus", "4"]])
def test_emit_writes_tp_and_pp_layouts_of_both_architectures(capsys, tmp_path, arch, layout):
    from planner.core.schema import load_config

    (tmp_path / "config.json").write_text(json.dumps(TINY_UNTIED[arch]))
    code, _, err = run(capsys, "emit", "--hf-config", str(tmp_path / "config.json"), "--seq-len", "64", "--gpus", "2",
                       "--fsdp", "full", "--micro-batch", "2", "--batch-tokens", "1024", "--tokens", "4096",
                       *layout, "--out", str(tmp_path / "e"))
    assert code == 0, err
    cfg = load_config(tmp_path / "e/run.yaml")
    assert (cfg.model.arch, cfg.parallel.tp, cfg.parallel.pp) == (arch, 2, 2 if "--pp" in layout else 1)


def test_pipeline_stages_split_t5s_encoder_then_decoder_blocks_and_hold_each_part_once():
    from planner.core.parallel import ParallelPlan
    from planner.memory import pipeline

    shape = replace(t5(), layers=2, decoder_layers=3, tied_embeddings=False)
    plan = ParallelPlan.from_flags(2, fsdp="full", pp=2, pp_schedule="interleaved-1f1b", pp_virtual=2, microbatches=4)
    shares = pipeline.shares_of(shape, plan)
    assert pipeline.stage_layers(shape.n_blocks, plan) == [1, 2, 1, 1]  # enc0 | enc1 dec0 | dec1 | dec2
    assert [(s.layers, s.decoder_layers, s.encoder_end, s.decoder_stages) for s in shares] == [(2, 1, False, 1),
                                                                                                (3, 2, True, 2)]
    assert sum(pipeline.stage_params(shape, s) for s in shares) == shape.param_count()
    bert_shape = replace(bert(), tied_embeddings=False)
    bert_shares = pipeline.shares_of(bert_shape, ParallelPlan.from_flags(2, fsdp="full", pp=2, microbatches=2))
    assert sum(pipeline.stage_params(bert_shape, s) for s in bert_shares) == bert_shape.param_count()
