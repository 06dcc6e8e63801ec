"""The engine interface the train loop drives, and measurement of live model-state bytes."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch

from planner.core.schema import ModelConfig, RunConfig
from pretrain.distributed import DistInfo
from pretrain.memory_probe import SavedTensorCounter
from pretrain.model import Transformer


def model_class(cfg: ModelConfig) -> type[torch.nn.Module]:
    """The module that builds `cfg`'s architecture: the decoder (`pretrain.model.Transformer`), the encoder
    (`pretrain.encoder.Encoder`) or the encoder-decoder (`pretrain.encoder_decoder.EncoderDecoder`); each takes
    (cfg, activation_checkpointing, seed=, checkpoint_every=) and returns its objective's loss from
    (inputs, targets)."""
    if cfg.arch == "encoder":
        from pretrain.encoder import Encoder

        return Encoder
    if cfg.arch == "encoder-decoder":
        from pretrain.encoder_decoder import EncoderDecoder

        return EncoderDecoder
    return Transformer


class Engine(ABC):
    """One strategy for holding and updating a model's states across ranks."""

    def __init__(self, cfg: RunConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        torch.manual_seed(cfg.train.seed)  # other random streams alike on every rank (weights: init_weights)
        self.model = self.build_model()
        self.measured_state_bytes: dict[str, float] | None = None
        self.measured_expert_state_bytes: dict[str, float] | None = None  # of those, the routed experts' (MoE)
        self.aux_losses: list[float] = []  # the last step's MoE load-balancing loss per micro-batch (MoE only)

    def build_model(self) -> torch.nn.Module:
        """The whole model, with the seed's weights, on every rank (one process, DDP and DeepSpeed start from
        it; the FSDP and pipeline engines build only their part, on the meta device: `materialize`)."""
        return model_class(self.cfg.model)(self.cfg.model, self.cfg.train.activation_checkpointing,
                                           seed=self.cfg.train.seed,
                                           checkpoint_every=self.cfg.train.activation_checkpointing_every)

    def materialize(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model (or stage) built on the meta device and laid out: its own shards allocated on this rank's
        device and filled with the seed's weights, the same numbers one process draws for the whole model."""
        model.to_empty(device=self.info.device)
        model.init_weights(self.cfg.train.seed)
        return model

    @property
    def autocast(self):
        enabled = self.cfg.train.precision == "bf16-mixed"
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=enabled)

    @abstractmethod
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The objective's mean cross-entropy of one micro-batch (`pretrain.objective`)."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, poison: bool = False) -> None:
        """Backpropagate one micro-batch (scaled for accumulation). `poison`: this step is being
        skipped; the engine must make sure it does not update the weights."""

    def forward_backward(self, batches: list[tuple[torch.Tensor, torch.Tensor]], bad_on_any_rank: Callable[[float], bool],
                         counter: SavedTensorCounter | None = None) -> tuple[list[float], bool]:
        """One step's micro-batches forward and backward; returns their losses and whether the step must be
        skipped (`bad_on_any_rank`, collective, on each loss). `counter`: count what the first micro-batch
        saves for backward. A pipeline engine runs them all in one schedule instead."""
        losses, skip = [], False
        self.aux_losses = []
        for micro, (x, y) in enumerate(batches):
            with counter.count() if counter is not None and micro == 0 else contextlib.nullcontext():
                loss = self.forward(x, y)
            losses.append(float(loss.detach()))
            aux = self.model.aux_loss() if isinstance(self.model, Transformer) else None
            if aux is not None:
                self.aux_losses.append(float(aux.detach()))
            skip = skip or bad_on_any_rank(losses[-1])  # collective: every rank skips the step or none
            self.backward(loss, poison=skip)
        return losses, skip

    def eval_losses(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        """Forward only (no gradients): each held-out micro-batch's loss."""
        with torch.no_grad():
            return [float(self.forward(x, y)) for x, y in batches]

    @abstractmethod
    def step(self, skip: bool) -> float | None:
        """End of a step: clip, update (unless `skip`), zero the gradients; returns the gradient norm."""

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @abstractmethod
    def save(self, path: Path) -> None:
        """Collective: write model and optimizer states under `path`."""

    @abstractmethod
    def load(self, path: Path) -> None:
        """Collective: read what `save` wrote (checking the model shape)."""

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def measure_states_at_first_update(self, optimizer: torch.optim.Optimizer,
                                       measure: Callable[[], dict[str, float]],
                                       params_are_master: Callable[[], bool] = lambda: False) -> None:
        """Set `measured_state_bytes` to `measure()` once, just before the first real update: the moment the
        planner's model states describe (optimizer states exist, every gradient is still held); for an MoE model
        also `measured_expert_state_bytes`, the routed experts' share (`params_are_master` as `measure` counts)."""
        def hook(*_) -> None:
            if self.measured_state_bytes is None and optimizer.state:
                self.measured_state_bytes = measure()

        optimizer.register_step_pre_hook(hook)
        experts = expert_parameters(self.model) if isinstance(self.model, torch.nn.Module) else []
        if experts:  # an MoE model: the routed experts' share of those states, which EP and FSDP split their own way
            def experts_hook(*_) -> None:
                if self.measured_expert_state_bytes is None and optimizer.state:
                    self.measured_expert_state_bytes = parameter_state_bytes(
                        self.model, optimizer, params_are_master=params_are_master(), params=experts)

            optimizer.register_step_pre_hook(experts_hook)


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct local storages behind `tensors` (DTensors count their local shard)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        if hasattr(t, "to_local"):
            t = t.to_local()
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def parameter_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer], *,
                          params_are_master: bool, params: list[torch.nn.Parameter] | None = None) -> dict[str, float]:
    """Live model-state bytes of a torch optimizer (or one per pipeline stage) over `model`'s parameters (or only
    `params` of them: an MoE model's experts). Under FSDP the (sharded, fp32) parameters are the master copy and
    the bf16 weights exist only while gathered, so they count there."""
    optimizers = optimizer if isinstance(optimizer, list) else [optimizer]
    params = list(model.parameters()) if params is None else params
    held = tensor_bytes(params)
    return {"weights": 0 if params_are_master else held, "master_weights": held if params_are_master else 0,
            "gradients": tensor_bytes(p.grad for p in params),
            "optimizer": tensor_bytes(t for o in optimizers for t in optimizer_state_tensors(o, params))}


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter] | None = None):
    """The optimizer's state tensors (of `params` only, when given), scalars (Adam's step) left out."""
    wanted = None if params is None else {id(p) for p in params}
    for param, state in optimizer.state.items():
        if wanted is not None and id(param) not in wanted:
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                yield value


def expert_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The routed experts' weights of every MoE layer (what expert parallelism splits); none for a dense model."""
    from pretrain.model import Experts

    return [p for m in model.modules() if isinstance(m, Experts) for p in m.parameters(recurse=False)]
