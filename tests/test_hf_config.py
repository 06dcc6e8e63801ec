"""`--hf-config`: parameter counts of real published configs (shipped in planner/hf_configs/) against the
counts their model cards and `model.num_parameters()` report."""

import json

import pytest

from planner.cli import main
from planner.model.hf_config import SHIPPED, shape_from_hf
from planner.model.presets import get_preset

PUBLISHED = {  # parameters as published (model cards; transformers' num_parameters())
    "llama3-8b": 8_030_261_248,  # GQA 8 kv heads, 128k vocabulary
    "llama3.1-70b": 70_553_706_496,
    "llama2-7b-hf": 6_738_415_616,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-0.5b": 494_032_768,  # tied embeddings
    "gemma2-9b": 9_241_705_984,  # head_dim 256 apart from hidden / heads; tied
    "olmo2-7b": 7_298_617_344,
    "gpt2": 124_439_808,  # GeLU, LayerNorm, learned positions, tied
    "pythia-1.4b": 1_414_647_808,  # GPT-NeoX: GeLU, LayerNorm, biases
    "bert-base-uncased": 109_514_298,  # BertForMaskedLM: MLM head tied, no pooler (tests/test_arch_plan.py)
    "t5-base": 222_903_552,  # T5ForConditionalGeneration, tied
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_hf_config_parameter_count_is_within_half_a_percent_of_the_published_one(name):
    shape = shape_from_hf(SHIPPED / f"{name}.json")
    assert shape.param_count() == pytest.approx(PUBLISHED[name], rel=0.005)


def test_shipped_configs_are_presets_too():
    assert get_preset("llama3-8b").shape == shape_from_hf(SHIPPED / "llama3-8b.json")


def test_estimate_reads_an_hf_config_from_disk(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text((SHIPPED / "mistral-7b.json").read_text())
    assert main(["estimate", "--hf-config", str(cfg), "--seq-len", "2048", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"] == PUBLISHED["mistral-7b"] and r["model"]["kv_heads"] == 8 and r["model"]["seq_len"] == 2048


@pytest.mark.parametrize("text, message", [("[1, 2]", "not a config object"), ("{", "not a JSON config"),
                                           ('{"model_type": "bart"}', "model_type 'bart'"),
                                           ('{"model_type": "llama", "hidden_size": 64}', "has none of")])
def test_a_bad_hf_config_is_one_line(capsys, tmp_path, text, message):
    cfg = tmp_path / "config.json"
    cfg.write_text(text)
    assert main(["estimate", "--hf-config", str(cfg)]) == 2
    assert message in capsys.readouterr().err


def test_estimate_from_an_emitted_run_config_equals_the_plan(capsys, tmp_path):
    assert main(["emit", "--out", str(tmp_path), "--model", "llama2-7b", "--gpus", "16", "--fsdp", "full"]) == 0
    capsys.readouterr()
    assert main(["estimate", "--config", str(tmp_path / "run.yaml"), "--json"]) == 0
    from_config = json.loads(capsys.readouterr().out)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert from_config["memory_per_gpu_bytes"] == plan["memory_per_gpu_bytes"]
