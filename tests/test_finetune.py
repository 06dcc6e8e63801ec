"""Fine-tuning memory (planner.memory.finetune) against our model with real PEFT adapters.

Trainable counts equal PEFT's live count; model-state bytes equal the live tensors after an AdamW
step; activation bytes equal what the saved-tensor hooks see (to the 4-byte loss and the gradient
of the input ids' gather), for several module sets, GQA and ranks.
"""

import pytest
import torch

from planner.core.schema import ModelConfig
from planner.memory import finetune
from planner.memory.finetune import FineTune
from planner.model.shapes import shape_of
from pretrain.memory_probe import SavedTensorCounter
from pretrain.model import Transformer

peft = pytest.importorskip("peft")


def adapted_model(modules, rank=8, layers=3, kv_heads=None, checkpointing="none"):
    """Our model in bf16, frozen, with PEFT LoRA adapters cast to fp32 (get_peft_model's default)."""
    cfg = ModelConfig(layers=layers, hidden=256, heads=4, kv_heads=kv_heads, vocab=1000, seq_len=128)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Transformer(cfg, activation_checkpointing=checkpointing)
    finally:
        torch.set_default_dtype(torch.float32)
    model.requires_grad_(False)
    model = peft.inject_adapter_in_model(peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(modules),
                                                         lora_dropout=0.0), model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model, shape_of(cfg)


CASES = [(("q", "v"), 8, None), (("q", "k", "v", "o", "gate", "up", "down"), 16, 2), (("down",), 4, None),
         (("gate",), 8, 2), (("up", "down"), 8, None), (("o",), 32, None)]


@pytest.mark.parametrize("modules, rank, kv", CASES)
def test_lora_trainable_count_equals_peft_live_count(modules, rank, kv):
    model, shape = adapted_model(modules, rank, kv_heads=kv)
    live = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert finetune.trainable_params(shape, FineTune("lora", rank, modules)) == live
    assert finetune.trainable_params(shape, FineTune("qlora", rank, modules)) == live


@pytest.mark.parametrize("modules, rank, kv", CASES)
def test_lora_activation_bytes_equal_the_saved_tensors(modules, rank, kv):
    model, shape = adapted_model(modules, rank, kv_heads=kv)
    counter = SavedTensorCounter(model)
    tokens = torch.randint(0, 1000, (2, 128))
    with counter.count():
        model(tokens, tokens)
    predicted = finetune.activation_bytes(shape, FineTune("lora", rank, modules), 2)
    assert predicted == pytest.approx(counter.bytes, rel=0.05)
    assert predicted == pytest.approx(counter.bytes, abs=4096)


@pytest.mark.parametrize("modules", [("q", "v"), ("q", "k", "v", "o", "gate", "up", "down")])
def test_lora_with_full_checkpointing_keeps_each_layers_input(modules):
    model, shape = adapted_model(modules, 8, checkpointing="full")
    counter = SavedTensorCounter(model)
    tokens = torch.randint(0, 1000, (2, 128))
    with counter.count():
        model(tokens, tokens)
    predicted = finetune.activation_bytes(shape, FineTune("lora", 8, modules), 2, "full")
    assert predicted == pytest.approx(counter.bytes, abs=4096)


def test_lora_state_bytes_equal_the_live_tensors_after_a_step():
    modules = ("q", "k", "v", "o")
    model, shape = adapted_model(modules, 8)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, foreach=False)
    tokens = torch.randint(0, 1000, (2, 128))
    model(tokens, tokens).backward()
    optimizer.step()
    live = {"weights": sum(p.numel() * p.element_size() for p in model.parameters()),
            "gradients": sum(p.grad.numel() * p.grad.element_size() for p in trainable),
            "optimizer": sum(t.numel() * t.element_size() for s in optimizer.state.values()
                             for t in s.values() if t.numel() > 1)}
    predicted = finetune.state_lines(shape, FineTune("lora", 8, modules))
    assert {k: predicted[k] for k in live} == live


def test_prompt_tuning_trains_k_soft_tokens_as_peft_counts_them():
    from peft.tuners.prompt_tuning import PromptEmbedding

    cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20, token_dim=256,
                                  num_transformer_submodules=1, num_attention_heads=4, num_layers=3)
    live = sum(p.numel() for p in PromptEmbedding(cfg, torch.nn.Embedding(1000, 256)).parameters())
    _, shape = adapted_model(("q",))
    assert finetune.trainable_params(shape, FineTune("prompt", soft_tokens=20)) == live == 20 * 256


def test_qlora_double_quantisation_costs_0127_bits_per_weight():
    # Dettmers et al. 2023, §3: constants drop from 32/64 = 0.5 to 8/64 + 32/(64*256) = 0.127 bits.
    assert pytest.approx(8 / 64 + 32 / (64 * 256), abs=2e-4) == finetune.NF4_DQ_BYTES * 8 - 4


def test_qlora_65b_fits_one_48_gb_gpu_as_in_the_paper_and_full_16_bit_needs_over_780_gb():
    # Dettmers et al. 2023, abstract: finetuning 65B needs > 780 GB in 16-bit, < 48 GB with QLoRA
    # (trained with gradient checkpointing, as the paper does).
    import json

    from planner.cli import main

    def total(*flags):
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["estimate", "--model", "llama-65b", "--gpus", "1", "--seq-len", "512", "--fragmentation",
                         "0", "--checkpointing", "full", "--json", *flags]) == 0
        return json.loads(out.getvalue())["memory_per_gpu_bytes"]["total"]

    assert total("--finetune", "qlora", "--lora-rank", "64", "--lora-modules", "q,k,v,o,gate,up,down") < 48 * 2**30
    assert total("--finetune", "full", "--precision", "bf16-mixed", "--zero", "0") > 780e9


@pytest.mark.parametrize("flags, message", [(["--lora-rank", "0"], "--lora-rank"), (["--lora-modules", "w1"], "w1"),
                                            (["--zero", "3"], "DDP replicas")])
def test_bad_finetune_flags_are_one_line(capsys, flags, message):
    from planner.cli import main

    assert main(["estimate", "--model", "llama2-7b", "--finetune", "lora", *flags]) == 2
    assert message in capsys.readouterr().err
