"""Training on several GPUs (or CPU processes) with torch's own launcher and DistributedDataParallel.

``torchrun --nproc_per_node N -m napari_segsuite.cli train ...`` (or ``segsuite train --gpus N``,
which runs exactly that through :func:`launch`) starts N processes; :func:`init_from_env` joins them
into one process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``): NCCL on CUDA, each process on the GPU of its ``LOCAL_RANK``, gloo
on the CPU. :func:`~.training.train` then sees an initialised group and

- wraps the network in DistributedDataParallel (:meth:`Sync.wrap`): gradients are averaged over the
  processes at every step, so the global batch is the per-process ``batch_size`` times the world size;
- gives each process crops of its own (:meth:`Sync.begin`), the validation split being the same on all;
- lets rank 0 alone validate, keep the best weights and write checkpoints and the model card; the
  others wait for its decision (:meth:`Sync.settle`) and every stop (time budget, cancel, early
  stopping) and the learning rate of each step come from rank 0 (:func:`broadcast_stop`), so all
  processes make the same steps and stop at the same one.

Not synchronised: batch-norm statistics and the Dice term of the loss are per process (as in most
DDP trainers); a loss that is a mean over samples and a network without batch statistics give the
same steps as one process with the global batch (tests/engine/test_distributed.py).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .models.base import ObjectModel

#: Why training stops, as sent between processes ("" : it goes on).
STOPS = ("", "epochs", "cancelled", "time budget", "early stopping")

#: How long a process waits for the others (rank 0 validating, calibrating, writing a checkpoint).
TIMEOUT = datetime.timedelta(hours=2)


def active() -> bool:
    """Whether this process belongs to an initialised group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that prints, validates and writes files."""
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting ``WORLD_SIZE``) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> torch.device | None:
    """Join the process group torchrun describes in the environment; nothing outside torchrun.

    Args:
        device: The ``--device`` asked for: ``"cpu"`` uses gloo; otherwise NCCL where CUDA is
            available (each process on ``cuda:LOCAL_RANK``), else gloo.

    Returns:
        The device of this process, or ``None`` when not launched as one of several.
    """
    if not launched():
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device not in ("cpu", "mps") and torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"Process {local} of this machine has no GPU ({torch.cuda.device_count()} here); "
                "use --gpus (or --nproc_per_node) at most the number of GPUs."
            )
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _tensor(values: Sequence[float]) -> torch.Tensor:
    """A float64 tensor on the device the group's backend sends from."""
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return torch.tensor(list(values), dtype=torch.float64, device=on)


def broadcast_stop(reason: str, *values: float) -> tuple[str, list[float]]:
    """Rank 0's stop decision (one of :data:`STOPS`) and ``values``, the same on every process.

    One process: as given."""
    if not active():
        return reason, list(values)
    t = _tensor([STOPS.index(reason), *values])
    dist.broadcast(t, 0)
    got = t.cpu().tolist()
    return STOPS[int(got[0])], got[1:]


def mean(value: float) -> float:
    """The mean of ``value`` over the processes (a step's loss: that of the global batch)."""
    if not active():
        return value
    t = _tensor([value])
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def barrier() -> None:
    if active():
        dist.barrier()


class Sync:
    """What the processes of one :func:`~.training.train` run agree on; with one process every
    method returns what it is given and sends nothing.

    Attributes:
        seed: The seed of this process's crops: the run's on rank 0 (and with one process), another
            on each other rank (far apart, as the crop threads of a process add their index to it).
    """

    def __init__(self, seed: int = 0) -> None:
        self.rank, self.size, self.main = rank(), world_size(), is_main()
        self.seed = seed + 1_000_003 * self.rank
        self._halted = False  # a step-loop stop was agreed: the epoch loop ends on every process

    @classmethod
    def begin(cls, seed: int, rng: np.random.Generator) -> tuple[Sync, np.random.Generator]:
        """The run's :class:`Sync` and this process's crop sampler: ``rng`` (that drew the validation
        split, the same on every process) on rank 0, a generator of its own on the others."""
        sync = cls(seed)
        return sync, rng if sync.rank == 0 else np.random.default_rng(sync.seed)

    def step(self, halt: str, lr: float, stopped: str = "epochs") -> tuple[str, float]:
        """Before a step: why training stops (``halt``, or ``stopped`` when it goes on) and the learning
        rate (time-based under a budget), both rank 0's."""
        halt, (lr,) = broadcast_stop(halt, lr)
        self._halted = self._halted or bool(halt)
        return halt or stopped, lr

    def settle(self, stopped: str) -> str:
        """At the end of an epoch (and before the first): rank 0's ``stopped`` (early stopping is decided
        there, after a validation the others do not run). After an agreed stop nothing is sent: every
        process leaves the loop, rank 0 perhaps after a last validation."""
        if self._halted or self.size == 1:
            return stopped
        return broadcast_stop(stopped)[0]

    @staticmethod
    def mean(value: float) -> float:
        return mean(value)

    def wrap(
        self,
        module: torch.nn.Module,
        loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
        train: list,
        patch: tuple[int, ...],
        device: torch.device,
    ) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (itself with one process). ``find_unused_parameters``
        only where a trial step (two plain crops, weights, buffers and random state restored) leaves a
        trainable parameter without a gradient (it costs a graph walk per step), and for object models
        (their heads may go without a loss on a crop without objects). An object model's
        :meth:`~.models.base.ObjectModel.loss` is what DDP runs as the forward pass."""
        if self.size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        if isinstance(module, ObjectModel):
            ddp = DistributedDataParallel(_LossForward(module), device_ids=ids, find_unused_parameters=True)
            return _ObjectLoss(ddp)
        unused = has_unused_parameters(module, loss, train, patch, device)
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)


def has_unused_parameters(
    module: torch.nn.Module,
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    train: list,
    patch: tuple[int, ...],
    device: torch.device,
) -> bool:
    """Whether a trial step of ``loss`` on two plain crops leaves a trainable parameter of ``module``
    without a gradient; gradients, buffers (batch-norm statistics) and random state are left as they were."""
    from .augment import crop_batch

    saved = {n: b.detach().clone() for n, b in module.named_buffers()}
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        x, y = crop_batch(train, patch, 2, np.random.default_rng(0), False)
        loss(module, x.to(device), y.to(device)).backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    unused = any(p.grad is None for p in trainable)
    for p in trainable:
        p.grad = None
    with torch.no_grad():
        for n, b in module.named_buffers():
            b.copy_(saved[n])
    return unused


class _LossForward(torch.nn.Module):
    """An object model whose forward pass is its loss (what DDP synchronises is the forward)."""

    def __init__(self, model: ObjectModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y)


class _ObjectLoss(ObjectModel):
    """What the tasks see of an object model under DDP: its ``loss`` runs through DistributedDataParallel."""

    def __init__(self, ddp: torch.nn.Module) -> None:
        super().__init__()
        self.ddp = ddp

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.ddp(x, y)


def strip_gpus(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--gpus N`` (or ``--gpus=N``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            out.append(a)
    return out


def launch(argv: Sequence[str], n: int) -> int:
    """Run ``segsuite`` ``argv`` (``--gpus`` removed) as ``n`` processes under torch's launcher on
    this machine (``python -m torch.distributed.run --standalone --nproc_per_node n``); the exit status."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "napari_segsuite.cli",
        *strip_gpus(argv),
    ]
    return subprocess.call(cmd)


__all__ = [
    "Sync",
    "barrier",
    "broadcast_stop",
    "init_from_env",
    "is_main",
    "launch",
    "mean",
    "rank",
    "shutdown",
    "world_size",
]
