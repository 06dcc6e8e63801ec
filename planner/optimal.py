"""`planner optimal`: a budget in any unit (or a model size alone) -> compute-optimal N, D, loss and shape.

Basis: a budget in GPU-hours, days or dollars buys model FLOPs at the stated MFU (`compute.MFU_BASIS`,
attention included). The law's C is 6ND, so the attention share of the suggested shape is set aside
before the law spends the rest (a fixed point: the shape depends on N). `--flops` and `--pf-days`
are C itself, as in Hoffmann et al. 2022.
"""

from __future__ import annotations

from planner import checks, compute, scaling
from planner.errors import PlannerError
from planner.hardware import get_gpu, load_catalog
from planner.plan import PARAMS_RANGE
from planner.shapes import infer_shape

DEFAULT_LAW = "epoch"
#: The smallest training run worth planning.
MIN_TOKENS = 1e6
#: Budgets given as machine time: they buy model FLOPs, not 6ND.
_MACHINE_UNITS = ("gpu_hours", "days", "dollars")


def law_flops(model_flops: float, law, params: float | None, seq_len: int) -> float:
    """The 6ND part of `model_flops` for the model the law picks (fixed point over the shape)."""
    c = model_flops
    for _ in range(20):
        n = params if params is not None else law.optimal(c)[0]
        share = 6 * n / compute.model_flops_per_token(n, infer_shape(n, seq_len))
        c_next = model_flops * share
        if abs(c_next / c - 1) < 1e-12:
            break
        c = c_next
    return c


def optimal_for_budget(unit: str | None, amount: float | None, *, law_name: str = DEFAULT_LAW,
                       tokens_per_param: float = 20.0, params: float | None = None,
                       max_tokens: float | None = None, max_epochs: float = 1.0, gpu_name: str = "a100-80gb",
                       gpu_catalog: str | None = None, gpus: int = 8, mfu: float = compute.DEFAULT_MFU,
                       price: float | None = None, seq_len: int = 2048) -> dict:
    """`unit` None: no budget; `params` must be given, and the law's optimal tokens for it are planned."""
    checks.integer("--gpus", gpus, 1, 1 << 24)
    checks.number("--tokens-per-param", tokens_per_param, 0.0, 1e4, lo_open=True)
    checks.number("--max-epochs", max_epochs, 1.0, 1e3)
    compute.validate_mfu(mfu)
    if price is not None:
        checks.number("--price", price, 0.0, 1000.0)
    if params is not None:
        checks.number("--params", params, *PARAMS_RANGE)
    if max_tokens is not None:
        checks.number("--max-tokens", max_tokens, 1e3, 1e17)
    gpu = get_gpu(gpu_name, load_catalog(gpu_catalog) if gpu_catalog else None)
    peak = gpu.peak_flops("bf16" if "bf16" in gpu.peak_tflops else "fp16")
    price = gpu.price_per_hour if price is None else price
    law = scaling.get_law(law_name, tokens_per_param)
    if unit is None:
        if params is None:
            raise PlannerError("budget: give one of --flops, --pf-days, --gpu-hours, --days, --dollars, "
                               "or --params alone for the optimal tokens of that size")
        flops = 6 * params * scaling.optimal_tokens_for_params(law, params)
        budget_flops, given = flops, {"params": params}
        params = None  # the size is the law's own optimum for this budget
    else:
        budget_flops = compute.budget_to_flops(unit, amount, peak_flops=peak, mfu=mfu, gpus=gpus,
                                               price_per_gpu_hour=price)
        flops = law_flops(budget_flops, law, params, seq_len) if unit in _MACHINE_UNITS else budget_flops
        given = {unit: amount}
    plan = scaling.plan_optimal(law, flops, params=params, max_tokens=max_tokens, max_epochs=max_epochs)
    if plan.params < PARAMS_RANGE[0] or plan.tokens < MIN_TOKENS:
        raise PlannerError(f"budget: {flops:.3g} FLOPs buys {plan.params:.3g} parameters on {plan.tokens:.3g} tokens; "
                           f"a plan needs at least {PARAMS_RANGE[0]:.0e} parameters and {MIN_TOKENS:.0e} tokens")
    shape = infer_shape(plan.params, seq_len)
    model_flops = compute.model_flops_per_token(plan.params, shape) * plan.tokens
    result = {
        **plan.to_dict(),
        "law_params": law.to_dict() if hasattr(law, "to_dict") else {"name": law.name, "source": law.source},
        "budget": {"given": given,
                   **compute.restate_budget(model_flops, peak_flops=peak, mfu=mfu, gpus=gpus,
                                            price_per_gpu_hour=price),
                   "flops_6nd": flops, "gpu": gpu.name, "mfu": mfu, "mfu_basis": compute.MFU_BASIS,
                   "price_per_gpu_hour": price},
        "suggested_shape": {"layers": shape.layers, "hidden": shape.hidden, "heads": shape.heads,
                            "kv_heads": shape.n_kv_heads, "ffn_hidden": shape.ffn, "vocab": shape.vocab,
                            "seq_len": shape.seq_len, "params": shape.param_count()},
    }
    if isinstance(law, scaling.ParametricLaw):
        n_num, _ = scaling.numerical_optimum(law, flops)
        result["numerical_check"] = {"params": n_num, "rel_diff_params": abs(n_num / plan.unconstrained_params - 1)}
    return result
