"""`planner optimal`: a budget in any unit -> compute-optimal N, D, loss and a model shape for N."""

from __future__ import annotations

from planner import compute, scaling
from planner.errors import PlannerError
from planner.hardware import get_gpu, load_catalog
from planner.shapes import infer_shape


def optimal_for_budget(unit: str, amount: float, *, law_name: str = "chinchilla", tokens_per_param: float = 20.0,
                       params: float | None = None, max_tokens: float | None = None, max_epochs: float = 1.0,
                       gpu_name: str = "a100-80gb", gpu_catalog: str | None = None, gpus: int = 8,
                       mfu: float = compute.DEFAULT_MFU, price: float | None = None, seq_len: int = 2048) -> dict:
    if gpus < 1:
        raise PlannerError(f"--gpus: {gpus!r} must be a positive integer")
    if tokens_per_param <= 0:
        raise PlannerError(f"--tokens-per-param: {tokens_per_param!r} must be positive")
    gpu = get_gpu(gpu_name, load_catalog(gpu_catalog) if gpu_catalog else None)
    peak = gpu.peak_flops("bf16" if "bf16" in gpu.peak_tflops else "fp16")
    price = gpu.price_per_hour if price is None else price
    flops = compute.budget_to_flops(unit, amount, peak_flops=peak, mfu=mfu, gpus=gpus, price_per_gpu_hour=price)
    law = scaling.get_law(law_name, tokens_per_param)
    plan = scaling.plan_optimal(law, flops, params=params, max_tokens=max_tokens, max_epochs=max_epochs)
    shape = infer_shape(plan.params, seq_len)
    result = {
        **plan.to_dict(),
        "law_params": law.to_dict() if hasattr(law, "to_dict") else {"name": law.name, "source": law.source},
        "budget": {"given": {unit: amount},
                   **compute.restate_budget(flops, peak_flops=peak, mfu=mfu, gpus=gpus, price_per_gpu_hour=price),
                   "gpu": gpu.name, "mfu": mfu, "price_per_gpu_hour": price},
        "suggested_shape": {"layers": shape.layers, "hidden": shape.hidden, "heads": shape.heads,
                            "ffn_hidden": shape.ffn, "vocab": shape.vocab, "seq_len": shape.seq_len,
                            "params": shape.param_count()},
    }
    if isinstance(law, scaling.ParametricLaw):
        n_num, d_num = scaling.numerical_optimum(law, flops)
        result["numerical_check"] = {"params": n_num, "tokens": d_num,
                                     "rel_diff_params": abs(n_num / plan.unconstrained_params - 1)}
    return result
