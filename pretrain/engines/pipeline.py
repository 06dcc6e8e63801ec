"""Pipeline parallelism: `torch.distributed.pipelining` stages and schedules, each stage FSDP2 (+ TP) inside.

Stages are cut from the one model by layer index (the model's class built with `layers`, `embedding` and `head`:
`pretrain.model.Transformer`, `pretrain.encoder.Encoder`, `pretrain.encoder_decoder.EncoderDecoder`, whose blocks
are numbered over its encoder's then its decoder's; the split the planner prices: `ParallelPlan.stage_layers` over
`planner.core.schema.pipeline_blocks`); rank r of a pipeline runs stages r, r + pp, ... (the looped
placement of torch's interleaved schedules). Each stage is parallelized by the same `parallelize` as a
whole model under FSDP, over the data-parallel and tensor-parallel parts of the mesh; the mesh's `pp`
dimension is the group the stages send activations and gradients over.

One optimizer step is one `schedule.step` over the step's `grad_accum` micro-batches (the schedule's m).
The loss is computed on the last stage; its m values are shared with the pipeline's other ranks, so
every rank logs, skips and stops on the same numbers. The schedule scales gradients by 1/m, which is
the plain engines' `loss / grad_accum`. The gradient norm is over the whole model: each rank's norm
over its stages, summed in squares over the pipeline. Checkpoints are torch.distributed.checkpoint,
keyed by the whole model's parameter names (a stage's are the model's), so each stage writes and reads
only its own part, and the checkpoint also loads into another layout.

Each rank builds only its stages, on the meta device, lays them out and then materialises its own shards
(as torchtitan does); every weight is drawn from its name and the seed (`Transformer.init_weights`), so
the stages hold exactly the weights one process would, which the equivalence tests hold. Where this differs
from torchtitan: FSDP keeps the plan's reshard-after-forward (torchtitan turns it off under PP to save
re-gathering per micro-batch).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from planner.core.schema import pipeline_blocks
from pretrain.encoder import masked_cross_entropy
from pretrain.engines.base import Engine, model_class, parameter_state_bytes
from pretrain.engines.checks import check_model_config, write_model_config
from pretrain.engines.fsdp import grad_norm
from pretrain.engines.parallelize import build_mesh, loss_context, parallelize
from pretrain.engines.torch_engine import make_adamw
from pretrain.memory_probe import LiveTensorCounter, SavedTensorCounter
from pretrain.model import cross_entropy


def stage_ranges(layers: int, plan) -> list[range]:
    """Each virtual stage's blocks, first to last (the planner's split)."""
    bounds, start = [], 0
    for n in plan.stage_layers(layers):
        bounds.append(range(start, start + n))
        start += n
    return bounds


def schedule_for(plan, stages: list, loss_fn: Callable):
    """The plan's torch schedule over this rank's stages."""
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    # zero-bubble is refused by `ParallelPlan.check_runnable` (its gradients miss FSDP2's reduction)
    single = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
    if plan.pp_schedule in single:
        return single[plan.pp_schedule](stages[0], plan.grad_accum, loss_fn=loss_fn)
    return ScheduleInterleaved1F1B(stages, plan.grad_accum, loss_fn=loss_fn)


class PipelineEngine(Engine):
    def build_model(self):
        return None  # this rank builds only its stages (below)

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        from torch.distributed.pipelining import PipelineStage

        plan = self.plan = cfg.parallel
        mesh = build_mesh(plan, info.device.type)
        self.pp_group = mesh.pp.get_group()
        self.pp_rank = plan.pp_rank(info.rank)
        ranges = stage_ranges(pipeline_blocks(cfg.model), plan)
        build = model_class(cfg.model)
        self.stage_ids = [self.pp_rank + k * plan.pp for k in range(plan.pp_virtual)]
        bf16 = cfg.train.precision == "bf16-mixed"
        parts = []
        for sid in self.stage_ids:
            with torch.device("meta"):  # the stage alone: no rank ever holds the whole model
                part = build(cfg.model, layers=ranges[sid], embedding=sid == 0, head=sid == plan.pp_stages - 1)
            parallelize(part, plan, mesh, bf16=bf16, activation_checkpointing=cfg.train.activation_checkpointing,
                        checkpoint_every=cfg.train.activation_checkpointing_every)
            parts.append(self.materialize(part))  # the whole model's weights for these names (init_weights)
        self.model = nn.ModuleList(parts)  # this rank's stages: what it trains, measures and checkpoints
        self.is_last = plan.pp_stages - 1 in self.stage_ids
        self.is_first = 0 in self.stage_ids
        self.stages = [PipelineStage(part, sid, plan.pp_stages, info.device, group=self.pp_group)
                       for part, sid in zip(parts, self.stage_ids, strict=True)]
        self.schedule = schedule_for(plan, self.stages, self._loss)
        # one optimizer per stage (torchtitan's too): a stage's optimizer states are keyed by its own names
        self.optimizers = [make_adamw(part.parameters(), cfg) for part in parts]
        self.measure_states_at_first_update(self.optimizers[-1], lambda: parameter_state_bytes(
            self.model, self.optimizers, params_are_master=bf16))
        self._counter: SavedTensorCounter | LiveTensorCounter | None = None

    # ---- one step: all micro-batches through the schedule -----------------------------------------
    def forward_backward(self, batches, bad_on_any_rank, counter=None):
        if counter is not None:
            self._count_first_microbatch(counter)
        values = self._through_schedule(self.schedule.step, batches)
        skip = False
        for value in values:  # the same calls on every rank: the guard is collective
            skip = bad_on_any_rank(value) or skip
        return values, skip

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        counter, self._counter = self._counter, None
        # the objective's loss (MLM's over the masked positions only: labels -100 elsewhere)
        loss_of = masked_cross_entropy if self.cfg.model.arch == "encoder" else cross_entropy
        if counter is None:
            return loss_of(logits, targets)
        counter.start()  # the first micro-batch's output layer is counted up to its loss: its targets too
        counter.keep(targets)
        loss = loss_of(logits, targets)
        counter.stop()
        return loss

    def _through_schedule(self, run: Callable, batches) -> list[float]:
        """`run` (the schedule's `step` or `eval`) over `batches` as one batch: the first stage feeds the
        inputs (an encoder-decoder's with the targets, which its decoder reads shifted right), the last the
        targets; returns the micro-batch losses, on every rank of the pipeline."""
        x, y = (torch.cat(parts).to(self.info.device) for parts in zip(*batches, strict=True))
        first = [x, y] if self.cfg.model.arch == "encoder-decoder" else [x]
        losses: list[torch.Tensor] = []
        with loss_context(self.plan):
            run(*(first if self.is_first else []), target=y if self.is_last else None,
                losses=losses if self.is_last else None, return_outputs=False)
        return self._shared_losses(losses)

    def _shared_losses(self, losses: list[torch.Tensor]) -> list[float]:
        """The last stage's m micro-batch losses, on every rank of the pipeline."""
        values = torch.zeros(self.plan.grad_accum, dtype=torch.float64)
        if self.is_last:
            local = [loss.detach().full_tensor() if hasattr(loss, "full_tensor") else loss.detach() for loss in losses]
            values = torch.stack([loss.float().cpu() for loss in local]).to(torch.float64)  # (TP: a DTensor)
        dist.all_reduce(values, group=self.pp_group)  # only the last stage contributes
        return values.tolist()

    def _count_first_microbatch(self, counter: SavedTensorCounter | LiveTensorCounter) -> None:
        """Count what each local stage saves for backward in its first forward (on the last stage, and its
        loss): one micro-batch's activations on this rank, the planner's per-stage figure. A stage's received
        activations are its first block's input, which it keeps; its output (sent on, or the logits) the
        schedule holds, not the stage's backward (`LiveTensorCounter` sees both alive; the hooks neither)."""
        for part in self.model:
            until_loss = self.is_last and part is self.model[-1]
            handles = []

            def start(_module, args):
                counter.start()
                counter.keep(*(a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()))

            def stop(_module, _args, output, until_loss=until_loss, handles=handles):
                counter.leave_out(output)
                counter.stop()
                if until_loss:
                    self._counter = counter  # the loss is counted in `_loss`
                for handle in handles:  # once: the first micro-batch only
                    handle.remove()

            handles += [part.register_forward_pre_hook(start), part.register_forward_hook(stop)]

    def forward(self, x, y):  # the plain engines' per-micro-batch forward: not a pipeline's unit of work
        raise NotImplementedError("a pipeline runs whole steps: forward_backward / eval_losses")

    def backward(self, loss, poison=False):
        raise NotImplementedError("a pipeline runs whole steps: forward_backward")

    def eval_losses(self, batches) -> list[float]:
        """Forward only, m micro-batches at a time; the loss on the last stage, shared with the pipeline."""
        m, out = self.plan.grad_accum, []
        with torch.no_grad():
            for i in range(0, len(batches), m):
                out.extend(self._through_schedule(self.schedule.eval, batches[i:i + m]))
        return out

    def step(self, skip):
        norm = None
        if not skip:
            norm = self._clip_gradients()
            for optimizer in self.optimizers:
                optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return norm

    def set_lr(self, lr: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def _clip_gradients(self) -> float:
        """Clip to optim.grad_clip by the whole model's norm: this rank's stages, summed over the pipeline."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        local = grad_norm(params, foreach=False)  # this rank's stages, each device mesh's over its ranks
        squares = (local.detach().float() ** 2).reshape(1).cpu()
        dist.all_reduce(squares, group=self.pp_group)
        total = squares.sqrt()[0]
        torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optim.grad_clip, total.to(local.device), foreach=False)
        return float(total)

    # ---- checkpoints: one DCP checkpoint, each stage its own keys ---------------------------------
    def _state(self) -> dict:
        """This rank's model and optimizer states keyed by the whole model's names (flattened optimizer
        states: `state.blocks.3.attn.q.weight.exp_avg`), so the stages' keys never collide."""
        options = StateDictOptions(flatten_optimizer_state_dict=True)
        model, optim = {}, {}
        for part, optimizer in zip(self.model, self.optimizers, strict=True):
            model.update(get_model_state_dict(part, options=options))
            optim.update(get_optimizer_state_dict(part, optimizer, options=options))
        return {"model": model, "optimizer": optim}

    def save(self, path: Path) -> None:
        dcp.save(self._state(), checkpoint_id=str(path))
        write_model_config(path, self.cfg.model, self.info.is_main)

    def load(self, path: Path) -> None:
        check_model_config(path, self.cfg.model)
        state = self._state()
        dcp.load(state, checkpoint_id=str(path))
        options = StateDictOptions(flatten_optimizer_state_dict=True, strict=False)
        for part, optimizer in zip(self.model, self.optimizers, strict=True):
            set_model_state_dict(part, state["model"], options=options)
            set_optimizer_state_dict(part, optimizer, state["optimizer"], options=options)
