"""Model, run config and token shards: the trainer's building blocks."""

import numpy as np
import pytest
import torch

from planner.core.errors import PlannerError
from planner.core.schema import ConfigError, ModelConfig, load_config
from planner.model.shapes import shape_of
from pretrain.data.shards import PackedBatches, ShardWriter, TokenShards, token_dtype
from pretrain.data.synthetic import write_markov_shards
from pretrain.model import Transformer


@pytest.mark.parametrize("kw", [{}, {"kv_heads": 2}, {"tied_embeddings": True}, {"layers": 3, "hidden": 96, "heads": 6,
                                                                                  "ffn_hidden": 200, "vocab": 1000}])
def test_model_parameter_count_equals_the_planners_shape_formula(kw):
    cfg = ModelConfig(**kw)
    assert Transformer(cfg).param_count() == shape_of(cfg).param_count()


def test_model_returns_logits_and_a_finite_loss():
    cfg = ModelConfig()
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab, (2, cfg.seq_len))
    assert model(x).shape == (2, cfg.seq_len, cfg.vocab)
    loss = model(x, x).detach()
    assert torch.isfinite(loss) and abs(float(loss) - np.log(cfg.vocab)) < 0.5  # ~uniform at init


def test_a_stage_built_on_the_meta_device_holds_the_whole_models_weights():
    # each weight is drawn from its own name and the seed, so a pipeline rank (or an FSDP shard) that builds
    # only its part, on the meta device, materialises exactly what one process holds for those names
    cfg = ModelConfig(layers=4)
    whole = Transformer(cfg, seed=7).state_dict()
    with torch.device("meta"):
        stage = Transformer(cfg, layers=range(2, 4), embedding=False, head=True)
    stage.to_empty(device="cpu")
    stage.init_weights(7)
    for name, tensor in stage.state_dict().items():
        assert torch.equal(tensor, whole[name]), name
    assert not torch.equal(Transformer(cfg, seed=8).state_dict()["blocks.2.mlp.up.weight"], whole["blocks.2.mlp.up.weight"])


def test_model_is_causal():
    cfg = ModelConfig()
    model = Transformer(cfg).eval()
    x = torch.randint(0, cfg.vocab, (1, cfg.seq_len))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % cfg.vocab
    assert torch.allclose(model(x)[0, :-1], model(y)[0, :-1])


@pytest.mark.parametrize("overrides, key", [
    (["parallel.micro_batch=three"], "parallel.micro_batch"),
    (["train.bogus=1"], "bogus"),
    (["model.heads=5"], "model.heads"),
    (["parallel.engine=megatron"], "parallel.engine"),
    (["parallel.zero_stage=4"], "parallel.zero_stage"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["data.train=x", *overrides])


def test_config_requires_the_training_data():
    with pytest.raises(ConfigError, match="data.train"):
        load_config(None, [])


def test_config_coerces_numbers_from_yaml_strings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: shards}\ntrain: {steps: '7'}\n")
    assert load_config(path).train.steps == 7


def test_token_dtype_is_uint16_up_to_65536_ids_else_uint32():
    assert token_dtype(65_536) == np.uint16 and token_dtype(131_072) == np.uint32  # BloombergGPT's 2^17


def test_a_vocabulary_too_large_for_uint16_is_refused_when_uint16_is_asked_for():
    with pytest.raises(PlannerError, match="does not fit uint16"):
        token_dtype(131_072, "uint16")


def test_shards_round_trip_documents_joined_by_eos(tmp_path):
    w = ShardWriter(tmp_path, seq_len=7, vocab_size=100, eos_id=0, rows_per_shard=2)
    for doc in ([5, 6, 7], [8, 9], list(range(10, 30))):
        w.add(doc, domain="finance")
    m = w.close()
    stream = [5, 6, 7, 0, 8, 9, 0, *range(10, 30), 0]
    shards = TokenShards.open(tmp_path)
    assert m["rows"] == len(stream) // 8 and len(m["shards"]) == 2
    assert np.concatenate([shards.row(i) for i in range(len(shards))]).tolist() == stream[: m["rows"] * 8]
    assert m["domain_tokens"] == {"finance": len(stream)}


def test_a_truncated_shard_is_detected(tmp_path):
    write_markov_shards(tmp_path, rows=64, rows_per_shard=32)
    shard = tmp_path / "shard_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(PlannerError, match="corrupt"):
        TokenShards.open(tmp_path)


def test_ranks_see_disjoint_rows_and_together_cover_the_epoch(tmp_path):
    write_markov_shards(tmp_path, seq_len=8, rows=64)
    shards = TokenShards.open(tmp_path)
    seen = []
    for rank in range(2):
        b = PackedBatches(shards, 4, rank, 2, seed=3)
        seen += [tuple(r) for _ in range(b.steps_per_epoch) for r in b.next()[0].tolist()]
    assert len(seen) == len(set(seen)) == 64


def test_loader_resumes_with_exactly_the_next_batch(tmp_path):
    write_markov_shards(tmp_path, seq_len=8, rows=64)
    shards = TokenShards.open(tmp_path)
    a = PackedBatches(shards, 4, seed=5)
    for _ in range(23):  # crosses an epoch boundary (16 steps per epoch)
        a.next()
    b = PackedBatches(shards, 4, seed=5)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.next()[0], b.next()[0]) for _ in range(20))


def test_loader_resumes_under_another_micro_batch_with_the_same_rows_next(tmp_path):
    write_markov_shards(tmp_path, seq_len=8, rows=64)
    shards = TokenShards.open(tmp_path)
    a = PackedBatches(shards, 4, seed=5)
    for _ in range(4):  # 16 rows of the epoch consumed
        a.next()
    b = PackedBatches(shards, 8, seed=5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.next()[0], torch.cat([a.next()[0], a.next()[0]]))  # rows 16-23, not 32-39
    with pytest.raises(PlannerError, match="consumed 28 rows of epoch 0, not a whole number of micro-batches of 8"):
        a.next()
        PackedBatches(shards, 8, seed=5).load_state_dict(a.state_dict())


@pytest.mark.parametrize("other, message", [
    ({"seed": 6}, "data.seed: 6, but the checkpoint's data order was drawn with seed 5"),
    ({"rows": 32}, r"holds \d+ rows, the checkpoint was trained on \d+: another corpus"),
])
def test_loader_refuses_a_checkpoint_of_another_data_order(tmp_path, other, message):
    write_markov_shards(tmp_path / "a", seq_len=8, rows=64)
    write_markov_shards(tmp_path / "b", seq_len=8, rows=other.get("rows", 64))
    a = PackedBatches(TokenShards.open(tmp_path / "a"), 4, seed=5)
    a.next()
    b = PackedBatches(TokenShards.open(tmp_path / ("b" if "rows" in other else "a")), 4, seed=other.get("seed", 5))
    with pytest.raises(PlannerError, match=message):
        b.load_state_dict(a.state_dict())


def test_a_cpu_run_reports_no_mfu_even_when_its_plan_names_a_gpu_peak():
    from planner.core.schema import RunConfig
    from pretrain.metrics import gpu_name, predict

    cfg = RunConfig()
    cfg.parallel = cfg.parallel.with_world(1)
    cfg.plan = {"peak_flops_per_gpu": 312e12, "tokens_per_s": 3.25e6}  # what `planner emit` writes for an A100
    predicted = predict(cfg, gpu_name(torch.device("cpu")))
    assert predicted.peak_flops is None and predicted.mfu is None and predicted.peak_bytes is None


def test_a_checkpoint_is_refused_for_another_shape_but_not_for_a_default_spelled_out(tmp_path):
    from dataclasses import replace

    from pretrain.engines.checks import check_model_state
    from pretrain.model import resolved_shape

    saved = vars(ModelConfig(layers=2, hidden=32, heads=4))  # ffn_hidden and kv_heads left to their defaults
    spelled = replace(ModelConfig(layers=2, hidden=32, heads=4), ffn_hidden=resolved_shape(saved)["ffn_hidden"],
                      kv_heads=4)
    check_model_state(saved, spelled, tmp_path)  # the same weights: was refused (checkpoint None vs config 256)
    with pytest.raises(ConfigError, match=r"model.ffn_hidden: checkpoint None vs config 128"):
        check_model_state(saved, replace(spelled, ffn_hidden=128), tmp_path)
