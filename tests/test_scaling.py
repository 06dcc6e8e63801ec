"""Scaling laws and compute-optimal plans against closed forms and published values."""

import math

import pytest

from planner.compute import flops as compute
from planner.core.errors import PlannerError
from planner.laws import scaling


def test_hoffmann_rounded_constants_at_gopher_budget():
    # Hoffmann et al. 2022 eq. 10 (rounded constants), C = 5.76e23.
    n, d = scaling.CHINCHILLA.optimal(5.76e23)
    assert (n, d) == (pytest.approx(3.219e10, rel=1e-3), pytest.approx(2.982e12, rel=1e-3))
    assert scaling.CHINCHILLA.loss(n, d) == pytest.approx(1.9307, abs=1e-4)


def test_besiroglu_refit_at_gopher_budget():
    # Besiroglu et al. 2024 refit: N* ~ 72B, D* ~ 1.33T, ~18 tokens per parameter.
    n, d = scaling.EPOCH.optimal(5.76e23)
    assert (n, d) == (pytest.approx(7.225e10, rel=1e-3), pytest.approx(1.329e12, rel=1e-3))


def test_unrounded_chinchilla_constants_give_the_papers_40b():
    # Hoffmann et al. 2022's approach-3 constants unrounded (as Besiroglu et al. 2024 recovered them) give
    # ~40.4B at Gopher's 5.76e23 FLOPs, the paper's "approach 3 -> 40B" (Table 3).
    assert scaling.CHINCHILLA_UNROUNDED.optimal(5.76e23)[0] == pytest.approx(40.4e9, rel=0.01)


@pytest.mark.parametrize("law", [scaling.CHINCHILLA, scaling.EPOCH, scaling.CHINCHILLA_UNROUNDED])
@pytest.mark.parametrize("flops", [1e19, 5.76e23, 1e26])
def test_closed_form_optimum_equals_the_numerical_minimum(law, flops):
    n_closed, _ = law.optimal(flops)
    n_num, d_num = scaling.numerical_optimum(law, flops)
    assert n_num == pytest.approx(n_closed, rel=1e-5)
    assert 6 * n_num * d_num == pytest.approx(flops)


def test_twenty_tokens_per_parameter_maps_70b_to_1_4t():
    # Hoffmann et al. 2022: Chinchilla, 70B parameters on 1.4T tokens.
    n, d = scaling.TokensPerParamLaw(20).optimal(6 * 70e9 * 1.4e12)
    assert (n, d) == (pytest.approx(70e9), pytest.approx(1.4e12))


def test_kaplan_loss_of_a_1_5b_model():
    # Kaplan et al. 2020, L(N) = (8.8e13 / N)^0.076.
    assert scaling.KaplanLaw().loss_n(1.5e9) == pytest.approx(2.304, abs=1e-3)


def test_kaplan_optimal_size_grows_as_c_to_the_0_73():
    law = scaling.KaplanLaw()
    ratio = law.optimal(1e24)[0] / law.optimal(1e23)[0]
    assert math.log10(ratio) == pytest.approx(0.73)


def test_fixed_model_size_gets_the_tokens_the_budget_buys_and_a_loss_gap():
    plan = scaling.plan_optimal(scaling.CHINCHILLA, 5.76e23, params=280e9)  # Gopher's size
    assert plan.tokens == pytest.approx(5.76e23 / (6 * 280e9))
    assert plan.loss_gap > 0


def test_data_limited_bloomberggpt_uses_all_the_data_with_a_bigger_model():
    # Wu et al. 2023: ~569B tokens available as the limit; budget ~1.3M A100 GPU-hours.
    flops = compute.budget_to_flops("gpu_hours", 1.3e6, peak_flops=312e12, mfu=0.32)
    plan = scaling.plan_optimal(scaling.EPOCH, flops, max_tokens=569e9)
    assert plan.constraint == "data-limited"
    assert plan.tokens == pytest.approx(569e9, rel=1e-6)
    assert plan.params == pytest.approx(flops / (6 * 569e9), rel=1e-6)
    assert plan.params > plan.unconstrained_params and plan.loss_gap > 0


def test_allowing_repetition_never_hurts_and_discounts_repeated_tokens():
    flops = 4.7e23
    one = scaling.plan_optimal(scaling.EPOCH, flops, max_tokens=300e9, max_epochs=1)
    four = scaling.plan_optimal(scaling.EPOCH, flops, max_tokens=300e9, max_epochs=4)
    assert four.loss <= one.loss and one.tokens < four.tokens <= 4 * 300e9 * (1 + 1e-9)
    # Muennighoff et al. 2023: 4 epochs are worth less than 4x fresh data, more than 1x.
    assert 300e9 < scaling.effective_tokens(300e9, 1.2e12) < 1.2e12


def test_data_limit_that_does_not_bind_changes_nothing():
    plan = scaling.plan_optimal(scaling.CHINCHILLA, 1e21, max_tokens=1e13)
    assert plan.constraint == "none" and plan.loss_gap == 0


@pytest.mark.parametrize("unit, amount", [("pf_days", 100), ("gpu_hours", 5e4), ("days", 30), ("dollars", 1e5)])
def test_every_budget_unit_round_trips_through_flops(unit, amount):
    kw = {"peak_flops": 989e12, "mfu": 0.45, "gpus": 64, "price_per_gpu_hour": 2.5}
    flops = compute.budget_to_flops(unit, amount, **kw)
    restated = compute.restate_budget(flops, **kw)
    assert restated[unit] == pytest.approx(amount)


@pytest.mark.parametrize("amount", [0, -1e20])
def test_non_positive_budget_is_refused(amount):
    with pytest.raises(PlannerError, match="positive"):
        compute.budget_to_flops("flops", amount, peak_flops=1e15, mfu=0.4)


def test_unknown_law_is_refused_with_the_known_ones():
    with pytest.raises(PlannerError, match="chinchilla"):
        scaling.get_law("hoffmann2")


def test_a_curve_law_file_cannot_be_used_for_planning(tmp_path):
    path = tmp_path / "curve.json"
    path.write_text('{"kind": "curve", "E": 2, "A": 3, "alpha": 0.3}')
    with pytest.raises(PlannerError, match="needs an L\\(N, D\\) law"):
        scaling.get_law(str(path))
