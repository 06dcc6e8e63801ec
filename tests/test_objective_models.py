"""The encoder (BERT, MLM) and the encoder-decoder (T5, span corruption) the trainer builds beside the decoder:
their parameter counts are the planner's, their losses are the objectives', and run configs are checked at load."""

import pytest
import torch

from planner.core.parallel import ParallelPlan
from planner.core.schema import ConfigError, ModelConfig, load_config
from planner.model.presets import get_preset
from planner.model.shapes import shape_of
from pretrain.encoder import IGNORE_INDEX, Encoder
from pretrain.encoder_decoder import EncoderDecoder, relative_buckets

BERT_BASE = ModelConfig(arch="encoder", layers=12, hidden=768, heads=12, ffn_hidden=3072, vocab=30522, seq_len=512,
                        max_positions=512, token_types=2, tied_embeddings=True, norm_eps=1e-12)
T5_BASE = ModelConfig(arch="encoder-decoder", layers=12, decoder_layers=12, hidden=768, heads=12, head_dim=64,
                      ffn_hidden=3072, vocab=32128, seq_len=512, mlp="relu", tied_embeddings=True, norm_eps=1e-6)
TINY_ENCODERS = [ModelConfig(arch="encoder", layers=2, hidden=64, heads=4, vocab=300, seq_len=32, token_types=2,
                             tied_embeddings=True),
                 ModelConfig(arch="encoder", layers=3, hidden=32, heads=2, ffn_hidden=48, vocab=100, seq_len=16,
                             max_positions=40)]
TINY_SEQ2SEQ = [ModelConfig(arch="encoder-decoder", layers=2, decoder_layers=3, hidden=64, heads=4, vocab=300,
                            seq_len=32, tied_embeddings=True),
                ModelConfig(arch="encoder-decoder", layers=2, hidden=64, heads=4, head_dim=8, vocab=300, seq_len=32,
                            mlp="geglu")]


def replace_untied(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with its own head (a pipeline holds the embedding and the head on different stages)."""
    return ModelConfig(**{**vars(cfg), "tied_embeddings": False})


@pytest.mark.parametrize("cfg", TINY_ENCODERS + TINY_SEQ2SEQ, ids=lambda c: f"{c.arch}-{c.layers}x{c.hidden}")
def test_tiny_models_have_the_planners_parameter_count(cfg):
    model = (Encoder if cfg.arch == "encoder" else EncoderDecoder)(cfg)
    assert model.param_count() == shape_of(cfg).param_count()


@pytest.mark.parametrize("cfg, preset, cls", [(BERT_BASE, "bert-base-uncased", Encoder),
                                              (T5_BASE, "t5-base", EncoderDecoder)])
def test_base_sized_models_built_on_meta_have_the_presets_count(cfg, preset, cls):
    with torch.device("meta"):
        model = cls(cfg)
    assert model.param_count() == shape_of(cfg).param_count() == get_preset(preset).shape.param_count()


def test_encoder_loss_reads_only_the_masked_positions():
    cfg = TINY_ENCODERS[0]
    model = Encoder(cfg, seed=1).eval()
    tokens = torch.randint(0, cfg.vocab, (2, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(tokens, IGNORE_INDEX)
    labels[:, 3], labels[1, 7] = tokens[:, 3], tokens[1, 7]
    logits = model(tokens)
    picked = torch.log_softmax(logits.float(), -1)[labels != IGNORE_INDEX]
    expected = -picked.gather(1, labels[labels != IGNORE_INDEX][:, None]).mean()
    torch.testing.assert_close(model(tokens, labels), expected)


def test_encoder_attends_both_ways():
    cfg = TINY_ENCODERS[0]
    model = Encoder(cfg, seed=1).eval()
    tokens = torch.randint(0, cfg.vocab, (1, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[0, -1] = (tokens[0, -1] + 1) % cfg.vocab
    assert not torch.allclose(model(tokens)[0, 0], model(changed)[0, 0])  # the first position sees the last


@torch.no_grad()
def test_decoder_side_is_causal_and_reads_targets_shifted_right():
    cfg = TINY_SEQ2SEQ[0]
    model = EncoderDecoder(cfg, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, cfg.vocab, (1, cfg.seq_len), generator=g)
    targets = torch.randint(0, cfg.vocab, (1, shape_of(cfg).n_target_len), generator=g)
    per_position = []
    for t in (targets, torch.cat([targets[:, :-1], (targets[:, -1:] + 1) % cfg.vocab], 1)):
        # each position's loss, from the model's own parts as its forward runs them
        memory = model.encode(inputs)
        start = torch.full_like(t[:, :1], 0)
        x = model.embed(torch.cat([start, t[:, :-1]], 1))
        bias = model._bias(model.decoder, t.shape[1], x.dtype)
        x = model._run(model.decoder, x, cfg.layers, bias, memory)
        logits = torch.nn.functional.linear(x * cfg.hidden ** -0.5, model.embed.weight)
        losses = torch.nn.functional.cross_entropy(logits[0].float(), t[0], reduction="none")
        per_position.append(losses)
        assert float(model(inputs, t)) == pytest.approx(float(losses.mean()), rel=1e-5)
    # changing the last target changes only the last position's loss: no position reads a later target
    torch.testing.assert_close(per_position[0][:-1], per_position[1][:-1])
    assert per_position[0][-1] != per_position[1][-1]


def test_relative_buckets_are_t5s():
    # Hugging Face's T5 with 32 buckets, max distance 128: offsets -1, 0, 1, 20, -20 from query 0 of 40 keys
    bi = relative_buckets(1, 40, 32, bidirectional=True)[0]
    assert [int(bi[k]) for k in (0, 1, 7, 8, 20, 39)] == [0, 17, 23, 24, 26, 28]
    causal = relative_buckets(40, 40, 32, bidirectional=False)
    assert int(causal[20, 0]) == 17 and int(causal[5, 4]) == 1 and int(causal[4, 5]) == 0


def write_yaml(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train: x\n" + text)
    return path


@pytest.mark.parametrize("text, key", [
    ("model:\n  arch: bidirectional\n", "model.arch"),
    ("model:\n  arch: encoder\ntrain:\n  objective: clm\n", "train.objective"),
    ("train:\n  objective: span-corruption\n", "train.objective"),
    ("train:\n  objective: denoise\n", "train.objective"),
    ("model:\n  arch: encoder\n  mlp: relu\n", "model.mlp"),
    ("model:\n  token_types: 2\n", "model.token_types"),
    ("model:\n  arch: encoder\n  decoder_layers: 2\n", "model.decoder_layers"),
    ("model:\n  arch: encoder\n  max_positions: 16\n", "model.seq_len"),
    ("model:\n  arch: encoder-decoder\nparallel:\n  engine: fsdp\n  ep: 2\n", "parallel.ep"),
    ("model:\n  arch: encoder\n  tied_embeddings: true\nparallel:\n  engine: fsdp\n  pp: 2\n  grad_accum: 2\n", "parallel.pp"),
    ("model:\n  arch: encoder-decoder\n  decoder_layers: 3\nparallel:\n  engine: fsdp\n  pp: 2\n  grad_accum: 2\n"
     "  pp_layers: [2, 2]\n", "parallel.pp_layers"),  # 2 + 3 blocks
    ("model:\n  arch: encoder\ntrain:\n  activation_checkpointing: full\n", "train.activation_checkpointing"),
    ("model:\n  arch: encoder-decoder\n  experts: 4\n", "model.experts"),
])
def test_wrong_architecture_settings_are_refused_at_load_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path, text))
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["encoder", "encoder-decoder"])
def test_tp_and_pp_load_for_both_architectures_and_ep_is_refused_alike_at_both_edges(tmp_path, arch):
    from planner.core.errors import PlannerError
    from planner.core.schema import parallel_refusal
    from planner.plan.request import EstimateRequest, resolve_model

    for layout in ("tp: 2", "pp: 2\n  grad_accum: 2"):
        cfg = load_config(write_yaml(tmp_path, f"model:\n  arch: {arch}\nparallel:\n  engine: fsdp\n  {layout}\n"))
        assert cfg.model.arch == arch
    _, _, why = parallel_refusal(arch, 1, 1, 2)
    with pytest.raises(ConfigError) as schema_edge:  # the run schema names its key
        load_config(write_yaml(tmp_path, f"model:\n  arch: {arch}\nparallel:\n  engine: fsdp\n  ep: 2\n"))
    assert str(schema_edge.value).startswith(f"parallel.ep: 2: {why}")
    preset = "bert-base-uncased" if arch == "encoder" else "t5-base"
    with pytest.raises(PlannerError) as planner_edge:  # the planner's (estimate, emit) names its flag
        resolve_model(EstimateRequest(model=preset, layout=ParallelPlan.from_flags(4, fsdp="full", ep=2)))
    assert str(planner_edge.value).startswith(f"--ep: 2: {why}")


@pytest.mark.parametrize("arch, objective", [("decoder", "clm"), ("encoder", "mlm"),
                                             ("encoder-decoder", "span-corruption")])
def test_each_architecture_defaults_to_its_objective(tmp_path, arch, objective):
    from planner.core.schema import objective_of

    assert objective_of(load_config(write_yaml(tmp_path, f"model:\n  arch: {arch}\n"))) == objective


# ---- pipeline stages: the same module cut by layer index --------------------------------------------------------
def _splits(blocks: int) -> list[list[range]]:
    """Every cut of `blocks` into two and three stages of one block or more."""
    two = [[range(0, i), range(i, blocks)] for i in range(1, blocks)]
    three = [[range(0, i), range(i, j), range(j, blocks)] for i in range(1, blocks) for j in range(i + 1, blocks)]
    return two + three


@pytest.mark.parametrize("cfg", [TINY_ENCODERS[1], replace_untied(TINY_SEQ2SEQ[0]), TINY_SEQ2SEQ[1]],
                         ids=lambda c: f"{c.arch}-{c.layers}x{c.hidden}")
def test_stages_chained_are_the_whole_model_loss_and_every_gradient(cfg):
    # every cut: the embedding and both relative position biases on the first stage, carried on; the encoder's
    # final norm on the stage with its last block; each stage's parameters keep the whole model's names
    cls = Encoder if cfg.arch == "encoder" else EncoderDecoder
    whole = cls(cfg, seed=3)
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, cfg.vocab, (2, cfg.seq_len), generator=g)
    targets = torch.randint(0, cfg.vocab, (2, shape_of(cfg).n_target_len), generator=g)
    if cfg.arch == "encoder":
        targets[:, ::3] = IGNORE_INDEX
    loss = whole(inputs, targets)
    loss.backward()
    grads = {name: p.grad for name, p in whole.named_parameters()}
    for split in _splits(shape_of(cfg).n_blocks):
        stages = [cls(cfg, seed=3, layers=r, embedding=i == 0, head=i == len(split) - 1) for i, r in enumerate(split)]
        carry = (inputs, targets) if cfg.arch == "encoder-decoder" else (inputs,)
        for stage in stages:
            carry = stage(*carry)
            carry = carry if isinstance(carry, tuple) else (carry,)
        staged = torch.nn.functional.cross_entropy(carry[0].float().flatten(0, 1), targets.flatten())
        staged.backward()
        assert float(staged.detach()) == pytest.approx(float(loss.detach()), rel=1e-6), split
        named = {name: p.grad for stage in stages for name, p in stage.named_parameters()}
        assert named.keys() == grads.keys(), split  # each parameter on exactly one stage
        for name, grad in grads.items():
            torch.testing.assert_close(named[name], grad, rtol=1e-5, atol=1e-7, msg=f"{split}: {name}")
