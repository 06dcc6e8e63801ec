"""Power-law fits: replication of Epoch AI's Chinchilla refit, recovery of known laws, bad data."""

import numpy as np
import pytest

from planner.core.errors import PlannerError
from planner.laws import fit


def test_reproduces_epoch_ai_huber_fit_on_chinchilla_figure4(published_data):
    # Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt") Huber fit on their Figure 4 data
    # (epoch-research/analyzing-chinchilla, data/svg_extracted_data.csv), 5 highest-loss runs excluded:
    # A 477.8, B 2143.9, E 1.817, alpha 0.3473, beta 0.3672.
    import pandas as pd

    df = pd.read_csv(published_data / "chinchilla_fig4_epoch.csv")
    n, c, loss = df["Model Size"].to_numpy(), df["Training FLOP"].to_numpy(), df["loss"].to_numpy()
    r = fit.fit_nd(n, c / (6 * n), loss, drop_worst=5)
    p = r.params
    assert r.converged and r.n_points == 240
    assert p["E"] == pytest.approx(1.817, rel=0.005)
    assert p["alpha"] == pytest.approx(0.3473, rel=0.02) and p["beta"] == pytest.approx(0.3672, rel=0.02)
    assert p["A"] == pytest.approx(477.8, rel=0.10) and p["B"] == pytest.approx(2143.9, rel=0.10)


def test_isoflop_on_chinchilla_figure4_gives_equal_scaling(published_data):
    # Hoffmann et al. 2022, approach 2: a = 0.49, b = 0.51 (Table 2).
    import pandas as pd

    df = pd.read_csv(published_data / "chinchilla_fig4_epoch.csv")
    r = fit.fit_isoflop(df["Model Size"].to_numpy(), df["Training FLOP"].to_numpy(), df["loss"].to_numpy())
    assert r.params["a"] == pytest.approx(0.49, abs=0.03) and r.params["b"] == pytest.approx(0.51, abs=0.03)
    assert r.params["a"] + r.params["b"] == pytest.approx(1.0)


TRUE_ND = {"E": 1.8, "A": 450.0, "B": 1800.0, "alpha": 0.33, "beta": 0.36}


def synthetic_grid(seed, noise=0.003):
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(np.log(5e7), np.log(2e10), 120))
    d = np.exp(rng.uniform(np.log(1e9), np.log(5e11), 120))
    loss = fit.predict_nd(TRUE_ND, n, d) * np.exp(rng.normal(0, noise, n.size))
    return n, d, loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nd_fit_recovers_a_known_law_from_noisy_runs(seed):
    n, d, loss = synthetic_grid(seed)
    p = fit.fit_nd(n, d, loss).params
    assert p["E"] == pytest.approx(TRUE_ND["E"], rel=0.03)
    assert p["alpha"] == pytest.approx(TRUE_ND["alpha"], rel=0.08)
    assert p["beta"] == pytest.approx(TRUE_ND["beta"], rel=0.08)


def test_runs_without_a_floor_converge_to_the_pure_power_law_and_say_so():
    n = np.repeat([2e4, 5e4, 1e5, 2e5], 3)
    d = np.tile([1e5, 2e5, 4e5], 4)
    truth = {"E": 0.0, "A": 40.0, "B": 25.0, "alpha": 0.33, "beta": 0.17}
    result = fit.fit_nd(n, d, fit.predict_nd(truth, n, d))
    assert result.converged and result.params["E"] == 0.0 and result.extra["floor"] is False
    assert result.message == fit.NO_FLOOR_NOTE
    assert result.params["alpha"] == pytest.approx(0.33, rel=0.05) and result.params["beta"] == pytest.approx(0.17, rel=0.05)


def test_runs_with_a_floor_keep_it():
    n, d, loss = synthetic_grid(0)
    result = fit.fit_nd(n, d, loss)
    assert result.converged and result.extra["floor"] is True and result.message == ""


def test_nd_bootstrap_gives_positive_standard_errors():
    n, d, loss = synthetic_grid(3)
    r = fit.fit_nd(n, d, loss, bootstrap=8)
    assert set(r.stderr) == {"E", "A", "B", "alpha", "beta"} and all(v > 0 for v in r.stderr.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curve_fit_recovers_a_known_curve_and_its_band_covers_the_truth(seed):
    rng = np.random.default_rng(seed)
    x = np.geomspace(100, 20_000, 60)
    truth = lambda x: 2.1 + 40.0 * x ** -0.45  # noqa: E731
    loss = truth(x) * np.exp(rng.normal(0, 0.002, x.size))
    r = fit.fit_curve(x, loss, bootstrap=60, seed=seed, target=100_000)
    assert r.params["E"] == pytest.approx(2.1, rel=0.03)
    assert r.params["alpha"] == pytest.approx(0.45, rel=0.1)
    t = r.extra["target"]
    assert t["loss_lo95"] <= truth(100_000) <= t["loss_hi95"]


def test_lower_envelope_keeps_only_frontier_points():
    x = np.array([1, 2, 2, 3, 4, 5])
    loss = np.array([5.0, 4.0, 4.5, 4.2, 3.0, 3.5])
    ex, el = fit.lower_envelope(x, loss)
    assert ex.tolist() == [1, 2, 4] and el.tolist() == [5.0, 4.0, 3.0]


def test_isoflop_recovers_the_exponent_of_a_known_law():
    law = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    rows = [(n, c) for c in (1e18, 1e19, 1e20, 1e21) for n in np.geomspace(1e7, 1e11, 25)
            if c / (6 * n) > 1e6]
    n, c = map(np.array, zip(*rows, strict=True))
    r = fit.fit_isoflop(n, c, fit.predict_nd(law, n, c / (6 * n)))
    assert r.params["a"] == pytest.approx(0.28 / 0.62, abs=0.02)


def test_runs_of_fewer_than_three_sizes_are_refused():
    n = np.array([1e8, 1e9] * 5)
    with pytest.raises(PlannerError, match="only 2 distinct value"):
        fit.fit_nd(n, np.geomspace(1e9, 1e11, 10), np.linspace(3, 2.5, 10))


def test_an_exponent_the_runs_cannot_determine_is_reported_not_converged():
    # a loss cliff between the two smallest sizes and nothing after: only an exponent far beyond any
    # published one fits, so alpha runs to its bound
    n = np.repeat([1e7, 1e8, 1e9], 4)
    d = np.tile([1e9, 3e9, 1e10, 3e10], 3)
    r = fit.fit_nd(n, d, 2.0 + 400 / d**0.3 + np.where(n == 1e7, 1.0, 0.0))
    assert not r.converged and "bound" in r.message


def test_fewer_runs_than_parameters_are_refused():
    with pytest.raises(PlannerError, match="need 6 or more"):
        fit.fit_nd([1e8, 1e9, 1e10], [1e9, 1e10, 1e11], [3.0, 2.7, 2.4])


def test_nan_and_non_positive_rows_are_named():
    with pytest.raises(PlannerError, match="row 1 is NaN"):
        fit.fit_curve([1, np.nan, 3, 4], [3, 2.9, 2.8, 2.7])
    with pytest.raises(PlannerError, match="row 2 is 0"):
        fit.fit_nd([1e8, 1e9, 0, 1e9, 1e8, 1e9], [1e9] * 6, [3.0] * 6)


def test_ctrl_c_cuts_a_bootstrap_short_and_keeps_the_resamples_done():
    result = fit.FitResult("nd", {}, converged=True, n_points=8)
    calls = []

    def resample(idx):
        calls.append(idx)
        if len(calls) == 4:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return [float(idx.sum())]

    samples = fit.bootstrap_samples(resample, 8, 100, 0, result)
    assert len(samples) == 3 and result.extra["bootstrap"] == 3 and result.extra["bootstrap_cut_short"]


def test_ctrl_c_before_two_resamples_interrupts_the_fit():
    def resample(idx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit.bootstrap_samples(resample, 8, 100, 0, fit.FitResult("nd", {}, converged=True, n_points=8))
