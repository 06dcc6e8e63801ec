"""`planner optimal`: a budget in any unit (or a model size alone) -> compute-optimal N, D, loss and shape.

Basis: a budget in GPU-hours, days or dollars buys model FLOPs at the stated MFU (`compute.MFU_BASIS`,
attention included). The law's C is 6ND, so the attention share of the suggested shape is set aside
before the law spends the rest (a fixed point: the shape depends on N). `--flops` and `--pf-days`
are C itself, as in Hoffmann et al. 2022.
"""

from __future__ import annotations

from planner.compute import flops as compute
from planner.core import checks
from planner.core.errors import PlannerError
from planner.laws import scaling
from planner.model.hardware import get_gpu, load_catalog
from planner.model.shapes import infer_shape
from planner.plan.request import PARAMS_RANGE

DEFAULT_LAW = "epoch"
#: The smallest training run worth planning.
MIN_TOKENS = 1e6
#: Unique tokens a corpus may hold (--max-tokens): the largest pretraining sets are ~1e13 tokens
#: (FineWeb 15T, Penedo et al. 2024; Llama 3.1's 15.6T, Dubey et al. 2024), so 1e17 leaves ~10^4 x room.
MAX_TOKENS = 1e17
#: Times the data may be repeated: past R* = 15.4 repetitions (Muennighoff et al. 2023, eq. 5;
#: `scaling.REPEAT_DECAY_EPOCHS`) a repeated token is worth little; 1000 epochs is far past any use.
MAX_EPOCHS = 1e3
#: Tokens per parameter (--law tokens-per-param): Chinchilla's 20 (Hoffmann et al. 2022); over-trained
#: small models reach 1e3-1e4 (Llama 3 8B: 15T tokens, ~1,900); below 0.1 the parameters go untrained.
TOKENS_PER_PARAM_RANGE = (0.1, 1e5)
#: Sequence length of the suggested shape: 16 tokens to a 1M-token context.
SEQ_LEN_RANGE = (16, 1 << 20)
#: GPUs: today's largest clusters hold ~1e5; 2^24 is ~100x that.
MAX_GPUS = 1 << 24
#: USD per GPU-hour: cloud list prices are ~1-10; 1000 is far above any.
MAX_PRICE = 1000.0
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
    checks.integer("--gpus", gpus, 1, MAX_GPUS)
    checks.number("--tokens-per-param", tokens_per_param, *TOKENS_PER_PARAM_RANGE)
    checks.number("--max-epochs", max_epochs, 1.0, MAX_EPOCHS)
    checks.integer("--seq-len", seq_len, *SEQ_LEN_RANGE)
    compute.validate_mfu(mfu)
    if price is not None:
        checks.number("--price", price, 0.0, MAX_PRICE)
    if params is not None:
        checks.number("--params", params, *PARAMS_RANGE)
    if max_tokens is not None:
        checks.number("--max-tokens", max_tokens, MIN_TOKENS, MAX_TOKENS)
    gpu = get_gpu(gpu_name, load_catalog(gpu_catalog) if gpu_catalog else None)
    peak = gpu.peak_flops("bf16" if "bf16" in gpu.peak_tflops else "fp16")
    price = gpu.price_per_hour if price is None else price
    law = scaling.get_law(law_name, tokens_per_param)
    if unit is None:
        if params is None:
            raise PlannerError("budget: give one of --flops, --pf-days, --gpu-hours, --days, --dollars, "
                               "or --params alone for the optimal tokens of that size")
        flops = 6 * params * scaling.optimal_tokens_for_params(law, params)
        if flops > compute.FLOPS_RANGE[1]:
            raise PlannerError(f"--params: {params:.3g} trained on law {law.name}'s optimal tokens needs {flops:.3g} "
                               f"FLOPs, beyond the {compute.FLOPS_RANGE[1]:g} a plan may spend")
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
    if plan.params > PARAMS_RANGE[1] * (1 + 1e-6):  # the law spends the budget on a model beyond the planner's
        raise PlannerError(f"budget: {flops:.3g} FLOPs buys {plan.params:.3g} parameters under law {law.name}; a plan "
                           f"may have at most {PARAMS_RANGE[1]:.0e}; lower the budget or fix --params")
    if plan.tokens > MAX_TOKENS * max_epochs:  # more tokens than any corpus holds (a huge budget on a small --params)
        raise PlannerError(f"budget: {flops:.3g} FLOPs on {plan.params:.3g} parameters is {plan.tokens:.3g} tokens, "
                           f"more than {MAX_TOKENS:.0e} unique tokens x --max-epochs {max_epochs:g}; lower the budget "
                           "or give a larger --params")
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
