"""Fitting power laws to loss curves and to grids of runs, with bootstrap uncertainty.

- `fit_nd`: approach 3 of Hoffmann et al. 2022 (§D.2), as replicated by Besiroglu et al. 2024:
  minimise Σ Huber_δ(LSE(a − α·log N, b − β·log D, e) − log L), δ = 1e-3, with L-BFGS, over a
  grid of starts α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}; A = e^a,
  B = e^b, E = e^e. The objective and its gradient are vectorised numpy, the whole grid (4,500
  starts) is scored in one pass, and L-BFGS runs from the best-scoring starts only (the rest end
  in the same or worse minima); bootstrap resamples restart from the full-data optimum.
  When E runs to zero (no floor in the runs: the losses still fall as a pure power law), E is not
  identified, and the nested law with E = 0 is fitted instead: L = A/N^alpha + B/D^beta, the pure power
  law of Kaplan et al. 2020 (their L(N, D) has no irreducible term). It converges when its exponents are
  determined; its loss has no floor, so it is not extrapolated below the runs without saying so, but the
  compute-optimal split N*, D* of a budget does not depend on E (Hoffmann et al. 2022, eq. 4).
- `fit_curve`: L(x) = E + A·x^(−α) on one run or the lower envelope of many, least squares on
  log loss; bootstrap bands for extrapolation.
- `fit_isoflop`: approaches 1-2: per compute budget a parabola in log N, its minimum N*(C), then
  N* ∝ C^a and D* ∝ C^b by linear regression in log-log space.

Each fit runs on one BLAS thread (`one_blas_thread`, threadpoolctl): its arrays are tiny, and OpenBLAS's
spinning threads only contend with whatever else the machine runs (a 12-run `fit_nd` beside a busy 2-core
machine: 16-38 s with OpenBLAS's threads, 5-11 s with one).
"""

from __future__ import annotations

import functools
import itertools
import sys
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, minimize
from scipy.special import logsumexp, softmax

from planner.compute.flops import FLOPS_RANGE
from planner.core import checks
from planner.core.errors import PlannerError

HUBER_DELTA = 1e-3
GRID = {
    "a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0), "e": np.arange(-1, 1.5, 0.5),
    "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5),
}
#: L-BFGS runs from this many of the best grid starts (all 4,500 are scored).
LBFGS_STARTS = 40
#: Exponents are searched in [0, 2.5] (Hoffmann's grid spans 0-2); one that ends on a bound means the
#: runs do not determine it, which is reported instead of printed as a fit.
EXPONENT_BOUNDS = (0.0, 2.5)
_ND_BOUNDS = [(None, None), (None, None), (None, None), EXPONENT_BOUNDS, EXPONENT_BOUNDS]


@dataclass
class FitResult:
    kind: str  # nd | curve | isoflop
    params: dict[str, float]
    stderr: dict[str, float] = field(default_factory=dict)
    converged: bool = True
    message: str = ""
    n_points: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.params, "stderr": self.stderr, "converged": self.converged,
                "message": self.message, "n_points": self.n_points, **self.extra}


def one_blas_thread(fit):
    """`fit` on one BLAS thread (threadpoolctl limits the loaded BLAS for the call and restores it after)."""
    @functools.wraps(fit)
    def limited(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fit(*args, **kwargs)
    return limited


def _check_positive(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise PlannerError(f"{name}: row {int(bad[0])} is NaN or infinite ({bad.size} such rows); clean the data first")
    bad = np.flatnonzero(values <= 0)
    if bad.size:
        raise PlannerError(f"{name}: row {int(bad[0])} is {float(values[bad[0]]):g}; values must be positive")
    return values


# ---------------------------------------------------------------------------------------- approach 3


def _huber(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    small = np.abs(r) <= HUBER_DELTA
    value = np.where(small, 0.5 * r * r, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
    grad = np.where(small, r, HUBER_DELTA * np.sign(r))
    return value, grad


def _nd_terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """The three log-space terms, shape (..., points, 3); theta (..., 5) = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))
    return np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (a - alpha * log_n).shape)], axis=-1)


def _nd_objective(theta: np.ndarray, log_n, log_d, log_l) -> tuple[float, np.ndarray]:
    terms = _nd_terms(theta, log_n, log_d)
    r = logsumexp(terms, axis=-1) - log_l
    value, dr = _huber(r)
    w = softmax(terms, axis=-1) * dr[:, None]
    grad = np.array([w[:, 0].sum(), w[:, 1].sum(), w[:, 2].sum(),
                     -(w[:, 0] * log_n).sum(), -(w[:, 1] * log_d).sum()])
    return float(value.sum()), grad


def _grid_starts() -> np.ndarray:
    return np.array(list(itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"])))


def _score_starts(starts: np.ndarray, log_n, log_d, log_l) -> np.ndarray:
    terms = _nd_terms(starts, log_n, log_d)  # (starts, points, 3)
    return _huber(logsumexp(terms, axis=-1) - log_l)[0].sum(axis=-1)


#: log E of the nested pure power law (E = 0): e^-60 ~ 1e-26 nats, nothing next to any loss; L-BFGS-B holds a
#: variable whose bounds are equal fixed.
NO_FLOOR_LOG_E = -60.0
_NO_FLOOR_BOUNDS = [*_ND_BOUNDS[:2], (NO_FLOOR_LOG_E, NO_FLOOR_LOG_E), *_ND_BOUNDS[3:]]


def _lbfgs_best(starts: np.ndarray, log_n, log_d, log_l, max_iter: int = 10_000, floor: bool = True):
    """The best L-BFGS optimum from `starts`; `floor` False fits the nested law with E = 0."""
    best, bounds = None, _ND_BOUNDS if floor else _NO_FLOOR_BOUNDS
    for start in starts:
        start = start if floor else np.array([*start[:2], NO_FLOOR_LOG_E, *start[3:]])
        res = minimize(_nd_objective, np.clip(start, [-np.inf] * 3 + [EXPONENT_BOUNDS[0]] * 2,
                                              [np.inf] * 3 + [EXPONENT_BOUNDS[1]] * 2),
                       args=(log_n, log_d, log_l), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-10})
        if best is None or res.fun < best.fun:
            best = res
    return best


#: A fitted E below this share of the lowest loss means the fit found no floor at all.
E_FLOOR = 1e-3


def _nd_params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = theta
    return {"E": 0.0 if e <= NO_FLOOR_LOG_E else float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
            "alpha": float(alpha), "beta": float(beta)}


#: The largest x a curve may be extrapolated to: steps and tokens are fewer than FLOPs, and FLOPs stop
#: at a plan's largest budget.
MAX_X = FLOPS_RANGE[1]
#: Most bootstrap resamples (as `--bootstrap` allows); numpy seeds are 0 to 2^32 - 1 here.
MAX_BOOTSTRAP, MAX_SEED = 10_000, (1 << 32) - 1


def _check_bootstrap(bootstrap: int, seed: int) -> None:
    checks.integer("--bootstrap", bootstrap, 0, MAX_BOOTSTRAP)
    checks.integer("--seed", seed, 0, MAX_SEED)


def bootstrap_samples(resample, n_points: int, count: int, seed: int, result: FitResult) -> list:
    """`count` fits of `resample(indices)` on resampled points (None = skipped), with progress on stderr.

    Ctrl-C cuts the bootstrap short: the samples so far are kept, and `result.extra` says so
    (`bootstrap`, the count done, and `bootstrap_cut_short`). A fit of 5 parameters takes seconds
    per resample, so a bootstrap of 100 runs for minutes.
    """
    from tqdm import tqdm

    rng, samples = np.random.default_rng(seed), []
    bar = tqdm(total=count, desc=f"bootstrap ({result.kind}; Ctrl-C stops early)", unit="fit", leave=False,
               disable=None, file=sys.stderr)
    try:
        for _ in range(count):
            sample = resample(rng.integers(0, n_points, n_points))
            if sample is not None:
                samples.append(sample)
            bar.update()
    except KeyboardInterrupt:
        if len(samples) < 2:
            raise
        result.extra["bootstrap_cut_short"] = True
        print(f"planner: bootstrap cut short after {len(samples)} of {count} resamples; the band uses those",
              file=sys.stderr)
    finally:
        bar.close()
    result.extra["bootstrap"] = len(samples)
    return samples


@one_blas_thread
def fit_nd(n, d, loss, *, drop_worst: int = 0, bootstrap: int = 0, seed: int = 0,
           starts: int = LBFGS_STARTS, max_iter: int = 10_000) -> FitResult:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (approach 3) to runs of N params trained on D tokens."""
    _check_bootstrap(bootstrap, seed)
    n, d, loss = (_check_positive(k, v) for k, v in (("--n-col", n), ("--d-col", d), ("--loss-col", loss)))
    if drop_worst < 0 or drop_worst >= len(loss):
        raise PlannerError(f"--drop-worst: {drop_worst} must be between 0 and the number of runs - 1 ({len(loss) - 1})")
    if drop_worst:
        keep = np.argsort(loss)[: len(loss) - drop_worst]
        n, d, loss = n[keep], d[keep], loss[keep]
    if len(loss) < 6:
        raise PlannerError(f"data: {len(loss)} runs cannot determine 5 parameters (E, A, B, alpha, beta); need 6 or more")
    for name, values in (("--n-col", n), ("--d-col", d)):
        if np.unique(values).size < 3:
            raise PlannerError(f"{name}: only {np.unique(values).size} distinct value(s) ({', '.join(f'{v:g}' for v in np.unique(values))}); "
                               "an exponent and its coefficient need at least 3")
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    grid = _grid_starts()
    order = np.argsort(_score_starts(grid, log_n, log_d, log_l))
    best = _lbfgs_best(grid[order[:starts]], log_n, log_d, log_l, max_iter)
    floor = np.exp(best.x[2]) >= E_FLOOR * loss.min()
    if not floor:  # E not identified: the nested pure power law (E = 0) is the fit
        best = _lbfgs_best(grid[order[:starts]], log_n, log_d, log_l, max_iter, floor=False)
    converged = bool(best.success and np.all(np.isfinite(best.x)))
    message = "" if converged else f"L-BFGS did not converge: {best.message}"
    at_bound = [name for name, v in (("alpha", best.x[3]), ("beta", best.x[4])) if min(abs(v - b) for b in EXPONENT_BOUNDS) < 1e-6]
    if at_bound:
        converged = False
        message = (f"{' and '.join(at_bound)} ended on the search bound {EXPONENT_BOUNDS}: the runs do not determine "
                   "it (more distinct model sizes and token counts are needed)")
    elif not floor and converged:
        message = NO_FLOOR_NOTE
    result = FitResult("nd", _nd_params(best.x), converged=converged, n_points=len(loss), message=message,
                       extra={"objective": float(best.fun), "drop_worst": drop_worst, "floor": bool(floor),
                              "huber_delta": HUBER_DELTA, "starts_scored": len(grid), "starts_optimised": starts})
    if bootstrap:
        boot_starts = np.vstack([best.x, grid[order[:3]]])

        def resample(idx):
            return list(_nd_params(_lbfgs_best(boot_starts, log_n[idx], log_d[idx], log_l[idx], floor=floor).x).values())

        samples = bootstrap_samples(resample, len(loss), bootstrap, seed, result)
        result.extra["bootstrap_params"] = [dict(zip(("E", "A", "B", "alpha", "beta"), map(float, row), strict=True))
                                            for row in samples]
        sd = np.std(np.array(samples), axis=0, ddof=1)
        result.stderr = dict(zip(("E", "A", "B", "alpha", "beta"), map(float, sd), strict=True))
    return result


#: What a converged fit without a floor says (FitResult.message; `extra["floor"]` is False).
NO_FLOOR_NOTE = ("E is not identified: the runs show no irreducible loss (still falling as a pure power law), so the "
                 "nested law with E = 0 was fitted (Kaplan et al. 2020's form); it predicts within the runs' range "
                 "and splits a budget into N* and D* as any E would, but says nothing of where a larger run levels off")


def predict_nd(params: dict[str, float], n, d) -> np.ndarray:
    return params["E"] + params["A"] / np.asarray(n, float) ** params["alpha"] + \
        params["B"] / np.asarray(d, float) ** params["beta"]


# ---------------------------------------------------------------------------------------- loss curves


def lower_envelope(x, loss) -> tuple[np.ndarray, np.ndarray]:
    """The compute frontier: points no run with smaller or equal x beats."""
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    order = np.lexsort((loss, x))
    keep_x, keep_l, best = [], [], np.inf
    for xi, li in zip(x[order], loss[order], strict=True):
        if li < best:
            keep_x.append(xi)
            keep_l.append(li)
            best = li
    return np.array(keep_x), np.array(keep_l)


def _curve_predict(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    e, a, alpha = theta
    return np.exp(e) + np.exp(a) * x ** (-alpha)


def _fit_curve_once(x, loss, starts) -> tuple[np.ndarray, bool, str]:
    log_l = np.log(loss)
    best = None
    for start in starts:
        res = least_squares(lambda t: np.log(_curve_predict(t, x)) - log_l, start, method="trf",
                            bounds=([-20, -20, 0], [np.log(loss.max()), 60, 5]), xtol=1e-12, ftol=1e-12)
        if best is None or res.cost < best.cost:
            best = res
    return best.x, bool(best.success), best.message


@one_blas_thread
def fit_curve(x, loss, *, bootstrap: int = 0, seed: int = 0, target: float | None = None) -> FitResult:
    """Fit L(x) = E + A·x^(−alpha) (x: steps, tokens or FLOPs); optionally extrapolate to `target`."""
    _check_bootstrap(bootstrap, seed)
    if target is not None:  # x is steps, tokens or FLOPs: none of them exceeds a plan's largest FLOPs
        checks.number("--target", target, 0.0, MAX_X, lo_open=True)
    x, loss = _check_positive("x", x), _check_positive("--loss-col", loss)
    if len(loss) < 4:
        raise PlannerError(f"data: {len(loss)} points cannot determine 3 parameters (E, A, alpha); need 4 or more")
    if np.unique(x).size < 3:
        raise PlannerError("x: fewer than 3 distinct values; a power law needs a range of x")
    e0 = np.log(loss.min()) + np.log([0.5, 0.9, 0.99])
    starts = [np.array([e, np.log(max(loss.max() - np.exp(e), 1e-3)) + al * np.log(x.min()), al])
              for e in e0 for al in (0.1, 0.3, 0.7, 1.5)]
    theta, ok, message = _fit_curve_once(x, loss, starts)
    params = {"E": float(np.exp(theta[0])), "A": float(np.exp(theta[1])), "alpha": float(theta[2])}
    result = FitResult("curve", params, converged=ok, n_points=len(loss),
                       message="" if ok else f"least squares did not converge: {message}")
    if bootstrap:
        def resample(idx):
            return _fit_curve_once(x[idx], loss[idx], [theta])[0] if np.unique(x[idx]).size >= 3 else None

        boots = np.array(bootstrap_samples(resample, len(loss), bootstrap, seed, result))
        values = np.column_stack([np.exp(boots[:, 0]), np.exp(boots[:, 1]), boots[:, 2]])
        result.stderr = dict(zip(("E", "A", "alpha"), map(float, values.std(axis=0, ddof=1)), strict=True))
        result.extra["_boot_thetas"] = boots
    if target is not None:
        result.extra["target"] = {"x": target, "loss": float(_curve_predict(theta, np.array([target]))[0])}
        if bootstrap:
            preds = np.array([_curve_predict(t, np.array([target]))[0] for t in boots])
            lo, hi = np.percentile(preds, [2.5, 97.5])
            result.extra["target"].update({"loss_lo95": float(lo), "loss_hi95": float(hi)})
    return result


def curve_band(result: FitResult, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fitted curve and its 95% bootstrap band at `xs` (the band is the fit itself without bootstrap)."""
    p = result.params
    mid = p["E"] + p["A"] * xs ** (-p["alpha"])
    boots = result.extra.get("_boot_thetas")
    if boots is None or len(boots) < 2:
        return mid, mid, mid
    preds = np.array([_curve_predict(t, xs) for t in boots])
    lo, hi = np.percentile(preds, [2.5, 97.5], axis=0)
    return mid, lo, hi


# ---------------------------------------------------------------------------------------- isoFLOP


def group_budgets(flops: np.ndarray, rel_tol: float = 0.1) -> np.ndarray:
    """Label runs whose budgets are within `rel_tol` of each other (in log space) as one isoFLOP group."""
    order = np.argsort(flops)
    labels = np.empty(len(flops), dtype=int)
    group, anchor = 0, None
    for i in order:
        if anchor is not None and np.log(flops[i] / anchor) > np.log1p(rel_tol):
            group += 1
            anchor = flops[i]
        anchor = flops[i] if anchor is None else anchor
        labels[i] = group
    return labels


@one_blas_thread
def fit_isoflop(n, flops, loss, *, min_runs: int = 3) -> FitResult:
    """Approach 2 of Hoffmann et al. 2022: parabola per budget, then N* ∝ C^a, D* ∝ C^b."""
    n, flops, loss = (_check_positive(k, v) for k, v in (("--n-col", n), ("--flops-col", flops), ("--loss-col", loss)))
    labels = group_budgets(flops)
    minima = []
    for g in np.unique(labels):
        mask = labels == g
        if mask.sum() < min_runs or np.unique(n[mask]).size < 3:
            continue
        c2, c1, c0 = np.polyfit(np.log(n[mask]), loss[mask], 2)
        if c2 <= 0:
            continue  # no minimum inside this budget's sizes: the sweep missed the valley
        log_n_opt = -c1 / (2 * c2)
        c = float(np.exp(np.mean(np.log(flops[mask]))))
        n_opt = float(np.exp(log_n_opt))
        minima.append({"flops": c, "params": n_opt, "tokens": c / (6 * n_opt),
                       "loss": float(c0 + c1 * log_n_opt + c2 * log_n_opt**2), "runs": int(mask.sum())})
    if len(minima) < 2:
        raise PlannerError(f"data: only {len(minima)} compute budget(s) with >= {min_runs} runs of distinct sizes "
                           "and a loss minimum; approaches 1-2 need two or more")
    c = np.log([m["flops"] for m in minima])
    a, ka = np.polyfit(c, np.log([m["params"] for m in minima]), 1)
    b, kb = np.polyfit(c, np.log([m["tokens"] for m in minima]), 1)
    return FitResult("isoflop", {"a": float(a), "b": float(b), "params_coeff": float(np.exp(ka)),
                                 "tokens_coeff": float(np.exp(kb))},
                     n_points=len(loss), extra={"minima": minima})
