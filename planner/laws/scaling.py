"""Scaling laws as small serialisable objects, and compute-optimal plans under them.

Sources
- Hoffmann et al. 2022 (Chinchilla), approach 3, eq. 10: L(N, D) = E + A/N^α + B/D^β with
  E 1.69, A 406.4, B 410.7, α 0.34, β 0.28 (rounded, as published). Under C = 6ND the optimum is
  N* = G·(C/6)^a, D* = G⁻¹·(C/6)^b with a = β/(α+β), b = α/(α+β), G = (αA/(βB))^(1/(α+β)).
- The same fit with unrounded constants (Besiroglu et al. 2024 recovered them: log A 6.0073404,
  log B 6.0179186, log E 0.5267228, α 0.33917084, β 0.2849083): the paper's "approach 3 -> 40B".
- Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt") refit on Figure 4's data:
  E 1.8172, A 482.01, B 2085.43, α 0.3478, β 0.3658; ≈ 20 tokens per parameter like approaches 1-2.
- Kaplan et al. 2020: L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (eq. 1.5), α_N 0.076,
  α_D 0.095, N_c 8.8e13, D_c 5.4e13 (N non-embedding); compute-efficient size
  N_opt = 1.3e9·C^0.73 with C in PF/s-days (§6.1, Fig. 14).
- The "20 tokens per parameter" rule (Hoffmann et al. 2022, approaches 1-2: 70B -> 1.4T).
- Repeated data (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", eq. 5):
  U unique tokens seen for R = epochs - 1 extra epochs are worth
  D' = U + U·R*·(1 - exp(-R/R*)) fresh tokens, R* ≈ 15.4.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from planner.core import checks
from planner.core.errors import PlannerError
from planner.core.io import read_json
from planner.core.units import PF_DAY_FLOPS

#: Muennighoff et al. 2023, fitted R*_D: how many repetitions before repeated data is worth little.
REPEAT_DECAY_EPOCHS = 15.4


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 10)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "fitted"
    source: str = ""

    kind = "nd"

    def loss(self, n: float, d: float) -> float:
        try:
            return self.E + self.A / n**self.alpha + self.B / d**self.beta
        except (OverflowError, ZeroDivisionError):  # an extreme fitted law far from its data
            return math.inf

    def optimal(self, flops: float) -> tuple[float, float]:
        """Closed-form compute-optimal (N*, D*) under C = 6ND."""
        a_exp = self.beta / (self.alpha + self.beta)
        b_exp = self.alpha / (self.alpha + self.beta)
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return g * (flops / 6) ** a_exp, (flops / 6) ** b_exp / g

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class KaplanLaw:
    """Kaplan et al. 2020: L(N, D) eq. 1.5 and N_opt = 1.3e9·C[PF-days]^0.73."""

    alpha_n: float = 0.076
    alpha_d: float = 0.095
    n_c: float = 8.8e13
    d_c: float = 5.4e13
    n_opt_coeff: float = 1.3e9
    n_opt_exp: float = 0.73
    name: str = "kaplan"
    source: str = "Kaplan et al. 2020, eq. 1.5 and Fig. 14"

    kind = "kaplan"

    def loss(self, n: float, d: float) -> float:
        return ((self.n_c / n) ** (self.alpha_n / self.alpha_d) + self.d_c / d) ** self.alpha_d

    def loss_n(self, n: float) -> float:
        """L(N) = (N_c/N)^α_N: data-unlimited loss of a model of N non-embedding parameters."""
        return (self.n_c / n) ** self.alpha_n

    def optimal(self, flops: float) -> tuple[float, float]:
        n = self.n_opt_coeff * (flops / PF_DAY_FLOPS) ** self.n_opt_exp
        return n, flops / (6 * n)


@dataclass(frozen=True)
class TokensPerParamLaw:
    """D = r·N with C = 6ND: N* = sqrt(C / (6r)). Loss from Chinchilla's law, for reference."""

    ratio: float = 20.0
    name: str = "tokens-per-param"
    source: str = "Hoffmann et al. 2022, approaches 1-2: ~20 tokens per parameter"

    kind = "tokens-per-param"

    def loss(self, n: float, d: float) -> float:
        return CHINCHILLA.loss(n, d)

    def optimal(self, flops: float) -> tuple[float, float]:
        n = math.sqrt(flops / (6 * self.ratio))
        return n, self.ratio * n


CHINCHILLA = ParametricLaw(1.69, 406.4, 410.7, 0.34, 0.28, "chinchilla",
                           "Hoffmann et al. 2022, eq. 10 (rounded, as published)")
CHINCHILLA_UNROUNDED = ParametricLaw(
    math.exp(0.5267228), math.exp(6.0073404), math.exp(6.0179186), 0.33917084, 0.2849083,
    "chinchilla-unrounded", "Hoffmann et al. 2022 approach 3, unrounded (Besiroglu et al. 2024)")
EPOCH = ParametricLaw(1.8172, 482.01, 2085.43, 0.3478, 0.3658, "epoch",
                      "Besiroglu et al. 2024, refit of Hoffmann et al. Figure 4 data")

LAWS = ("chinchilla", "chinchilla-unrounded", "epoch", "tokens-per-param", "kaplan")


def get_law(name: str, tokens_per_param: float = 20.0):
    """A law by name, or a JSON file written by `planner fit nd`."""
    builtin = {"chinchilla": CHINCHILLA, "chinchilla-unrounded": CHINCHILLA_UNROUNDED, "epoch": EPOCH,
               "kaplan": KaplanLaw(), "tokens-per-param": TokensPerParamLaw(tokens_per_param)}
    if name in builtin:
        return builtin[name]
    path = Path(name)
    if path.suffix == ".json" or path.exists():
        return load_law(path)
    raise PlannerError(f"--law: unknown law {name!r}; use one of {', '.join(LAWS)} or a fitted law .json file")


#: A law file is a few hundred bytes; anything this large is not one.
MAX_LAW_BYTES = 1 << 20
#: Exponents a law file may hold: (0, 5]. `planner fit nd` searches [0, 2.5] and refuses one on a bound;
#: 0 divides by zero in the optimum's a = beta / (alpha + beta), and past 5 no published fit comes near.
MAX_EXPONENT = 5.0
#: E (nats per token) at most this: the entropy of a uniform 2^32-token vocabulary is 22.2.
MAX_E = 100.0


def _coefficient(where: str, key: str, value, lo: float, hi: float, *, lo_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (value > lo if lo_open else value >= lo) or value > hi:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if math.isfinite(hi) else f"> {lo:g}"
        raise PlannerError(f"{where}: {key} {value!r} must be a finite number {'in ' * math.isfinite(hi)}{interval}")
    return float(value)


def parse_law(data, where: str, name: str | None = None, *, need_kind: bool = True,
              flag: str = "--law") -> ParametricLaw:
    """An L(N, D) law from its JSON (a `planner fit nd` file, or a ladder's prediction), typed: E in [0, 100],
    A and B finite and > 0, alpha and beta in (0, 5]; a fit recorded as not converged is refused. `where`
    (the file) and the key start every message (after `flag`, the option that named the file, if any);
    `need_kind`: the file must say `"kind": "nd"` (a fit file does)."""
    source, where = where, f"{flag}: {where}" if flag else where
    if not isinstance(data, dict):
        raise PlannerError(f"{where} holds a {type(data).__name__}, not a law (a JSON object)")
    if data.get("kind", None if need_kind else "nd") != "nd":
        raise PlannerError(f"{where} holds a {str(data.get('kind'))[:40]!r} law; planning needs an L(N, D) "
                           "law from `planner fit nd`")
    missing = [k for k in ("E", "A", "B", "alpha", "beta") if k not in data]
    if missing:
        raise PlannerError(f"{where} lacks {', '.join(missing)} (an L(N, D) law needs E, A, B, alpha, beta)")
    if data.get("converged", True) is not True:
        raise PlannerError(f"{where}: converged {data.get('converged')!r}: the fit did not converge "
                           f"({str(data.get('message', ''))[:120]}); refit before planning with it")
    values = {"E": _coefficient(where, "E", data["E"], 0.0, MAX_E, lo_open=False),
              "A": _coefficient(where, "A", data["A"], 0.0, math.inf, lo_open=True),
              "B": _coefficient(where, "B", data["B"], 0.0, math.inf, lo_open=True),
              "alpha": _coefficient(where, "alpha", data["alpha"], 0.0, MAX_EXPONENT, lo_open=True),
              "beta": _coefficient(where, "beta", data["beta"], 0.0, MAX_EXPONENT, lo_open=True)}
    label = data.get("name", name or "fitted")
    if not isinstance(label, str) or not label:
        raise PlannerError(f"{where}: name {label!r} must be a non-empty string")
    checks.no_control(f"{where}: name", label)
    law = ParametricLaw(**values, name=label[:200], source=source)
    try:
        law.optimal(1e21)  # G = (alpha A / (beta B))^(1 / (alpha + beta)) must be a number, not an overflow
    except (OverflowError, ZeroDivisionError):
        raise PlannerError(f"{where}: A {law.A:g} and B {law.B:g} with alpha {law.alpha:g} and beta "
                           f"{law.beta:g} overflow the compute-optimal split; not a usable fit") from None
    return law


def load_law(path: Path) -> ParametricLaw:
    """A law file from `planner fit nd`, read through `read_input` (no FIFO or device, at most 1 MiB) and typed
    by `parse_law`."""
    try:
        data = read_json(path, MAX_LAW_BYTES)
    except OSError as exc:  # missing, a FIFO or device, too large
        raise PlannerError(f"--law: cannot read {path}: {exc.strerror or exc}".splitlines()[0]) from None
    except PlannerError as exc:  # not UTF-8; not JSON
        raise PlannerError(f"--law: {exc}") from None
    return parse_law(data, str(path), name=Path(path).stem)


def optimal_tokens_for_params(law, params: float) -> float:
    """The tokens D for which `params` is the law's compute-optimal size (70B -> 1.4T at 20 per
    parameter). Every law's N* grows with C, so bisection on log C finds the budget."""
    if not params > 0:
        raise PlannerError(f"--params: {params!r} must be positive")
    lo, hi = math.log(6 * params**2 * 1e-3), math.log(6 * params**2 * 1e7)  # 1e-3 to 1e7 tokens per parameter
    if law.optimal(math.exp(hi))[0] < params:
        raise PlannerError(f"--params: {params:.3g} is not an optimum of law {law.name} below 1e7 tokens/parameter")
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if law.optimal(math.exp(mid))[0] < params else (lo, mid)
    return math.exp(hi) / (6 * params)


def effective_tokens(unique_tokens: float, tokens: float) -> float:
    """Fresh-token value of training `tokens` on `unique_tokens` of data (Muennighoff et al. 2023)."""
    if tokens <= unique_tokens:
        return tokens
    repeats = tokens / unique_tokens - 1
    return unique_tokens * (1 + REPEAT_DECAY_EPOCHS * (1 - math.exp(-repeats / REPEAT_DECAY_EPOCHS)))


def numerical_optimum(law, flops: float, max_tokens: float | None = None,
                      unique_tokens: float | None = None) -> tuple[float, float]:
    """Minimise L(C/(6D), D_eff) over log D numerically (bounded Brent), optionally D <= max_tokens.

    Checks the closed form, and solves the data-limited case (with repetition discounting).
    """
    from scipy.optimize import minimize_scalar  # lazy: scipy costs start-up the estimate path never pays

    def loss_at(log_d: float) -> float:
        d = math.exp(log_d)
        d_eff = effective_tokens(unique_tokens, d) if unique_tokens else d
        return law.loss(flops / (6 * d), d_eff)

    hi = math.log(max_tokens) if max_tokens else math.log(flops / 6) - 1.0
    lo = min(math.log(1e3), hi - 1)
    res = minimize_scalar(loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    d = math.exp(res.x)
    return flops / (6 * d), d


@dataclass(frozen=True)
class OptimalPlan:
    flops: float
    params: float
    tokens: float
    loss: float | None
    law: str
    constraint: str  # none | fixed-params | data-limited
    unconstrained_params: float
    unconstrained_tokens: float
    unconstrained_loss: float | None
    epochs: float | None = None

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    @property
    def loss_gap(self) -> float | None:
        if self.loss is None or self.unconstrained_loss is None:
            return None
        return self.loss - self.unconstrained_loss

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_param": self.tokens_per_param, "loss_gap": self.loss_gap}


def plan_optimal(law, flops: float, *, params: float | None = None, max_tokens: float | None = None,
                 max_epochs: float = 1.0) -> OptimalPlan:
    """The compute-optimal (N, D) for a FLOP budget, optionally with N fixed or the data limited.

    Data-limited: the corpus holds `max_tokens` unique tokens and may be repeated up to
    `max_epochs` times; repeated tokens count at their Muennighoff et al. value in the loss.
    """
    if not flops > 0:
        raise PlannerError(f"budget: {flops!r} FLOPs must be positive")
    if max_epochs < 1:
        raise PlannerError(f"--max-epochs: {max_epochs!r} must be at least 1")
    n_opt, d_opt = law.optimal(flops)
    best = law.loss(n_opt, d_opt)
    common = {"flops": flops, "law": law.name, "unconstrained_params": n_opt, "unconstrained_tokens": d_opt,
              "unconstrained_loss": best}
    if params is not None:
        tokens = flops / (6 * params)
        return OptimalPlan(params=params, tokens=tokens, loss=law.loss(params, tokens), constraint="fixed-params",
                           **common)
    if max_tokens is None or d_opt <= max_tokens:
        return OptimalPlan(params=n_opt, tokens=d_opt, loss=best, constraint="none",
                           epochs=(d_opt / max_tokens) if max_tokens else None, **common)
    cap = max_tokens * max_epochs
    if isinstance(law, (ParametricLaw, KaplanLaw)):
        n, d = numerical_optimum(law, flops, max_tokens=cap, unique_tokens=max_tokens)
    else:  # a fixed ratio has no loss trade-off to optimise: use all the data it may
        d = min(d_opt, cap)
        n = flops / (6 * d)
    loss = law.loss(n, effective_tokens(max_tokens, d))
    return OptimalPlan(params=n, tokens=d, loss=loss, constraint="data-limited", epochs=d / max_tokens, **common)
