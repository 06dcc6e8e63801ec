"""Checks before any launch: the plan at the real world size fits, paths exist, batch sizes agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.schema import RunConfig, load_ds_config
from planner.plan.result import Estimate


class LaunchError(PlannerError):
    """A job that must not start; the message says why, with the numbers."""


@dataclass(frozen=True)
class Preflight:
    world: int
    fits: bool | None  # None: the run config carries no plan to check
    message: str
    plan: Estimate | None = None  # the planner's estimate at this world size (launch slurm takes its wall-clock)


def check_paths(cfg: RunConfig) -> None:
    train = Path(cfg.data.train)
    if not (train / "manifest.json").is_file():
        raise LaunchError(f"data.train: {train} has no manifest.json (run the data pipeline first)")
    if cfg.data.eval and not (Path(cfg.data.eval) / "manifest.json").is_file():
        raise LaunchError(f"data.eval: {cfg.data.eval} has no manifest.json")
    if cfg.data.tokenizer and not Path(cfg.data.tokenizer).is_file():
        raise LaunchError(f"data.tokenizer: {cfg.data.tokenizer} does not exist")


def check_batch(cfg: RunConfig, world: int) -> None:
    """The batch rule at the launch's world size (planner.core.parallel), and DeepSpeed's JSON agreeing with it."""
    try:
        plan = cfg.parallel.with_world(world)
    except PlannerError as exc:
        raise LaunchError(str(exc)) from None
    if plan.engine != "deepspeed" or not cfg.engine.ds_config:
        return
    try:
        ds = load_ds_config(cfg.engine.ds_config)
    except PlannerError as exc:
        raise LaunchError(str(exc)) from None
    if ds.get("train_batch_size", plan.batch) != plan.batch:
        raise LaunchError(f"engine.ds_config: train_batch_size {ds['train_batch_size']} != parallel.micro_batch "
                          f"{plan.micro_batch} x parallel.grad_accum {plan.grad_accum} x {plan.dp} data-parallel ranks "
                          f"= {plan.batch}; re-emit the plan for this world size")


def planned_request(cfg: RunConfig, world: int, gpus_per_node: int):
    """The planner's request for this run config on the launch's world size."""
    from planner.plan.request import request_from_run

    return request_from_run(cfg).on(world, gpus_per_node)


def check_fit(cfg: RunConfig, world: int, gpus_per_node: int, force: bool) -> Preflight:
    if cfg.planning is None:
        return Preflight(world, None, "no plan in the run config: memory not checked")
    from planner.plan.estimate import estimate

    try:
        result = estimate(planned_request(cfg, world, gpus_per_node))
    except PlannerError as exc:
        raise LaunchError(str(exc)) from None
    need, have = result.memory.total / 2**30, result.fit.gpu_memory_bytes / 2**30
    message = (f"plan at {world} GPU(s): {need:,.1f} GiB per GPU needed of {have:,.1f} GiB on "
               f"{result.hardware.gpu} (peak at {result.memory.peak_moment}; largest micro-batch that fits: "
               f"{result.fit.max_micro_batch})")
    if not result.fit.fits and not force:
        fewest = {k: v for k, v in result.fit.min_gpus_to_fit.items() if v}
        raise LaunchError(f"preflight: will not fit: {message}; fewest GPUs that fit: {fewest or 'none'}; "
                          "use --force to launch anyway")
    return Preflight(world, result.fit.fits, message, result)


def check_verified_fit(cfg: RunConfig, planned: Estimate, world: int, gpus_per_node: int, force: bool) -> str:
    """`planner verify` at the launch's world size: the tracker's measured peak, plus the planner's
    CUDA runtime and fragmentation lines (which no tracker sees), against the GPU's memory."""
    from planner.cli.verify import verify_request

    result = verify_request(planned_request(cfg, world, gpus_per_node))
    untracked = sum(result["not_tracked"].values())
    need = (result["lines"]["allocated"]["tracker_at_peak"] + untracked) / 2**30
    have = planned.fit.gpu_memory_bytes / 2**30
    message = (f"verify at {world} GPU(s): measured peak {need:,.1f} GiB per GPU (runtime and fragmentation "
               f"included) of {have:,.1f} GiB, {result['seconds']:.0f} s")
    if need > have and not force:
        raise LaunchError(f"preflight: will not fit: {message}; use --force to launch anyway")
    return message


def preflight(cfg: RunConfig, world: int, gpus_per_node: int, force: bool = False,
              verify: bool = False) -> Preflight:
    check_paths(cfg)
    check_batch(cfg, world)
    check = check_fit(cfg, world, gpus_per_node, force)
    if verify and check.fits is not None:
        verified = check_verified_fit(cfg, check.plan, world, gpus_per_node, force)
        check = Preflight(world, check.fits, f"{check.message}; {verified}", check.plan)
    return check
