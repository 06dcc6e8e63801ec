"""Compute, time and cost against published runs (each test names its paper and table)."""

import pytest

from planner.compute import flops as compute
from planner.core.units import PF_DAY_FLOPS
from planner.model.hardware import get_gpu
from planner.model.presets import PRESETS
from planner.model.shapes import ModelShape


def test_one_petaflop_day_is_8_64e19_flops():
    # Brown et al. 2020, GPT-3, Appendix D.
    assert PF_DAY_FLOPS == 8.64e19


@pytest.mark.parametrize("params, flops, pf_days", [
    (174.6e9, 3.14e23, 3.64e3),  # GPT-3 175B
    (12.85e9, 2.31e22, 268),  # GPT-3 13B
    (2.65e9, 4.77e21, 55.2),  # GPT-3 2.7B
])
def test_gpt3_table_d1_training_compute(params, flops, pf_days):
    # Brown et al. 2020, Table D.1, 300B tokens, C = 6ND.
    c = compute.estimate_compute(params, 300e9, None, peak_flops=312e12, gpus=1)
    assert c.flops_6nd == pytest.approx(flops, rel=0.005)
    assert c.pf_days == pytest.approx(pf_days, rel=0.005)


def test_gpt3_175b_preset_flops_with_its_exact_shape():
    # Brown et al. 2020, Table D.1: GPT-3 175B on 300B tokens, 3.14e23 FLOPs, 3.64e3 petaFLOP/s-days.
    shape = PRESETS["gpt3-175b"].shape
    c = compute.estimate_compute(shape.param_count(), 300e9, shape, peak_flops=312e12, gpus=1)
    assert c.flops_6nd == pytest.approx(3.14e23, rel=0.005)
    assert c.flops_6nd / PF_DAY_FLOPS == pytest.approx(3640, rel=0.005)
    assert c.flops > c.flops_6nd  # the attention term is on top


@pytest.mark.parametrize("n, tokens, flops", [(400e6, 8.0e9, 1.92e19), (1e9, 20.2e9, 1.21e20),
                                              (10e9, 205.1e9, 1.23e22), (175e9, 3.7e12, 3.85e24)])
def test_chinchilla_table3_rows_are_6nd(n, tokens, flops):
    # Hoffmann et al. 2022, Table 3 (approach 1 projections).
    assert compute.estimate_compute(n, tokens, None, peak_flops=1e15, gpus=1).flops_6nd == pytest.approx(flops, rel=0.01)


def test_palm_per_token_flops_gpt3_shape():
    # Chowdhery et al. 2022, App. B: 6N + 12*L*H*Q*T for L 96, h 12288, s 2048, V 51200.
    shape = ModelShape(96, 12288, 96, 51200, 2048, mlp="gelu", norm="layernorm", position="learned",
                       tied_embeddings=True, bias=True)
    n = shape.param_count()
    assert 6 * n == pytest.approx(1.047e12, rel=1e-3)
    assert compute.model_flops_per_token(n, shape) == pytest.approx(1.076e12, rel=1e-3)


def test_full_recomputation_costs_a_third_more_hardware_flops():
    # Korthikanti et al. 2022: a second forward pass, 8N + 16LHQT vs 6N + 12LHQT (4/3).
    shape = PRESETS["llama2-7b"].shape
    n = shape.param_count()
    ratio = compute.hardware_flops_per_token(n, shape, "full") / compute.hardware_flops_per_token(n, shape, "none")
    assert ratio == pytest.approx(4 / 3)


def test_llama_7b_gpu_hours_imply_43_percent_mfu():
    # Touvron et al. 2023, Table 15: 82,432 A100-80GB hours for 6.7B on 1T tokens.
    assert compute.implied_mfu(6 * 6.7e9 * 1e12, 82_432, 312e12) == pytest.approx(0.434, abs=0.001)


def test_llama_7b_published_gpu_hours_go_back_through_the_planner_exactly(capsys):
    # The same run on the planner's one MFU basis (model FLOPs with attention): the implied MFU, fed to
    # `planner estimate`, gives back the published 82,432 GPU-hours; on 6ND it is LLaMA's 43%.
    import json

    from planner.cli import main
    from planner.model.presets import PRESETS

    shape = PRESETS["llama-7b"].shape
    model_flops = compute.model_flops_per_token(shape.param_count(), shape) * 1e12
    mfu = compute.implied_mfu(model_flops, 82_432, 312e12)
    assert main(["estimate", "--model", "llama-7b", "--tokens", "1e12", "--gpus", "2048", "--mfu", repr(mfu),
                 "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["compute"]
    assert c["gpu_hours"] == pytest.approx(82_432, rel=1e-12)
    assert c["mfu_6nd"] == pytest.approx(compute.implied_mfu(6 * shape.param_count() * 1e12, 82_432, 312e12))
    assert c["mfu_6nd"] == pytest.approx(0.436, abs=0.001) and "PaLM" in c["mfu_basis"]


def test_llama2_70b_gpu_hours_round_trip_through_estimate():
    # Touvron et al. 2023b, Table 2: 1,720,320 A100-80GB hours for 70B on 2T tokens.
    mfu = compute.implied_mfu(6 * 70e9 * 2e12, 1_720_320, 312e12)
    c = compute.estimate_compute(70e9, 2e12, None, peak_flops=312e12, gpus=2048, mfu=mfu)
    # estimate_compute uses 6N + attention; with shape=None that is 6N, so it must return the hours
    assert c.gpu_hours == pytest.approx(1_720_320, rel=1e-9)


@pytest.mark.parametrize("gpu, gpu_days", [("v100", 8.0), ("a100-80gb", 3.205)])
def test_a_petaflop_day_in_gpu_days_at_full_efficiency(gpu, gpu_days):
    # The seeds: "1 PF/s-day ~ 8 V100s for a day" (V100: 125 dense fp16 TFLOP/s). For A100 the dense
    # bf16 peak (312) gives 3.2 GPU-days; the seeds' "2 A100s" matches the 624 TFLOP/s sparse peak.
    peak = get_gpu(gpu).peak_flops("fp16")
    c = compute.estimate_compute(1e9, 1e9, None, peak_flops=peak, gpus=1)
    assert c.gpu_days_per_pf_day == pytest.approx(gpu_days, rel=1e-3)


def test_wall_days_and_cost_follow_from_gpu_hours():
    c = compute.estimate_compute(7e9, 140e9, None, peak_flops=312e12, gpus=64, mfu=0.5, price_per_gpu_hour=2.0)
    assert c.gpu_hours == pytest.approx(6 * 7e9 * 140e9 / (312e12 * 0.5) / 3600)
    assert c.wall_days == pytest.approx(c.gpu_hours / 64 / 24)
    assert c.cost_usd == pytest.approx(2.0 * c.gpu_hours)


def test_bloomberggpt_mfu_from_its_own_report():
    # Wu et al. 2023: 50.6B params, 569B tokens, 512 A100-40GB for ~53 days (~651k GPU-hours);
    # 6ND gives 1.73e23 FLOPs, i.e. ~24% MFU on model FLOPs (their ~32% counts recomputation).
    flops = 6 * 50.6e9 * 569e9
    assert flops == pytest.approx(1.73e23, rel=0.01)
    assert compute.implied_mfu(flops, 512 * 53 * 24, 312e12) == pytest.approx(0.24, abs=0.01)


@pytest.mark.parametrize("mfu", [0, -0.1, 1.5])
def test_mfu_outside_zero_to_one_is_refused(mfu):
    with pytest.raises(compute.PlannerError, match="--mfu"):
        compute.validate_mfu(mfu)
