"""Shapes and parameter counts against the papers' published sizes."""

import pytest

from planner.core.errors import PlannerError
from planner.model.presets import PRESETS, get_preset
from planner.model.shapes import ModelShape, infer_shape, snap_to_family


@pytest.mark.parametrize("name, published, rel", [
    ("gpt3-175b", 174.6e9, 1e-3),  # Brown et al. 2020 (175B nominal; 174.6B counted)
    ("llama-7b", 6.738e9, 1e-3),  # Touvron et al. 2023 (6.7B)
    ("llama2-13b", 13.016e9, 1e-3),
    ("llama2-70b", 68.977e9, 1e-3),  # grouped-query attention, 8 kv heads
    ("bloomberggpt-50b", 50.6e9, 2e-3),  # Wu et al. 2023, 50.6B
])
def test_preset_parameter_counts_match_the_papers(name, published, rel):
    assert get_preset(name).shape.param_count() == pytest.approx(published, rel=rel)


def test_every_preset_is_within_10_percent_of_its_published_size():
    # Chinchilla's published 70B counts terms (relative position biases etc.) not modelled here.
    for name, preset in PRESETS.items():
        assert preset.shape.param_count() == pytest.approx(preset.published_params, rel=0.10), name


@pytest.mark.parametrize("params", [1e8, 1e9, 7e9, 70e9, 175e9])
def test_inferred_shape_is_within_10_percent_of_the_requested_count(params):
    assert infer_shape(params).param_count() == pytest.approx(params, rel=0.10)


def test_inferred_7b_shape_is_llama_like():
    shape = infer_shape(7e9)
    assert (shape.hidden, shape.heads, shape.mlp) == (4096, 32, "swiglu")
    assert 30 <= shape.layers <= 34


def test_swiglu_ffn_follows_llamas_8h_over_3_rule():
    assert ModelShape(32, 4096, 32, 32000, 2048).ffn == 11008


def test_heads_that_do_not_divide_hidden_are_refused_with_the_flag_named():
    with pytest.raises(PlannerError, match=r"--heads: 48 does not divide --hidden 4000"):
        ModelShape(32, 4000, 48, 32000, 2048)


def test_grouped_query_attention_needs_kv_heads_dividing_heads():
    with pytest.raises(PlannerError, match="--kv-heads"):
        ModelShape(32, 4096, 32, 32000, 2048, kv_heads=5)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(PlannerError, match="known: gpt3-175b"):
        get_preset("gpt5")


def test_params_7e9_snaps_to_llamas_32_layers():
    # Touvron et al. 2023, Table 2: LLaMA-7B is 32 x 4096 (the cube-root rule alone gives 33).
    shape = infer_shape(7e9)
    assert (shape.layers, shape.hidden, shape.heads) == (32, 4096, 32)


def test_params_70e9_snaps_to_llama2_70b_with_gqa():
    # Touvron et al. 2023b: Llama-2-70B is 80 x 8192, 64 heads, 8 kv heads, ffn 28672.
    shape = infer_shape(70e9)
    assert (shape.layers, shape.hidden, shape.n_kv_heads, shape.ffn) == (80, 8192, 8, 28672)


def test_a_count_far_from_every_family_keeps_the_inferred_shape():
    # By the rule in infer_shape's docstring, worked by hand: L = round((30e9 / (12 x 128^2))^(1/3)) = 53
    # gives h = 6818 exactly; the multiples of 1024 either side are 6144 (65 layers, ffn 16384:
    # 29,838,034,944 params) and 7168 (48 layers, ffn 19200: 48 x 618,412,032 + 2 x 32000 x 7168 + 7168
    # = 30,142,536,704); both are within 3%, and 7168/48 = 149 is nearer the aspect 128 than 6144/65 = 95.
    assert snap_to_family(30e9) is None
    shape = infer_shape(30e9)
    assert (shape.layers, shape.hidden, shape.heads, shape.ffn) == (48, 7168, 56, 19200)
    assert shape.param_count() == 30_142_536_704


@pytest.mark.parametrize("params", [3.5e8, 1.5e9, 3e9, 2e10, 3e10, 1e11, 3e11, 1e12])
@pytest.mark.parametrize("tp", [1, 8, 16])
def test_inferred_head_counts_split_over_8_and_the_tensor_parallel_degree(params, tp):
    shape = infer_shape(params, tp=tp)
    assert shape.heads % 8 == 0 and shape.heads % tp == 0
    assert shape.param_count() == pytest.approx(params, rel=0.08)
