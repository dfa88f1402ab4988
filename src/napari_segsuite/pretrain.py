"""Self-supervised pre-training on the user's own images, inside the training budget.

Before the labels are used, the network learns to restore its images from a damaged copy: a third of
8-pixel blocks blanked out and noise added (masked reconstruction with denoising, in the spirit of
masked autoencoders and Noise2Void). Restoring a block from its surroundings needs the same features
that segmenting does (edges, textures, what continues where), and it uses every pixel of every image,
labelled or not: the images without labels a user has (`segsuite train --unlabelled DIR`) take part.
The restored grey image is read from the model's first output map; afterwards the output layer is
re-initialised and supervised training continues from the pre-trained weights.

No Qt or napari here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .models.base import ObjectModel
from .progress import Progress, Work, map_progress
from .samples import pad_end

log = logging.getLogger(__name__)

#: Edge of the blanked-out blocks, pixels, and the share of them blanked.
BLOCK, MASKED = 8, 1 / 3
#: Standard deviation of the noise added to the visible pixels (images are normalised to about 0..1).
NOISE = 0.1


def damage(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A damaged copy of a batch ``(N, C, *spatial)`` and the mask of its blanked pixels ``(N, 1, *spatial)``."""
    spatial = x.shape[2:]
    coarse = [math.ceil(n / BLOCK) for n in spatial]
    mask = torch.rand((x.shape[0], 1, *coarse), generator=gen) < MASKED
    for axis, n in enumerate(spatial):
        mask = mask.repeat_interleave(BLOCK, dim=2 + axis).narrow(2 + axis, 0, n)
    noisy = x + NOISE * torch.randn(x.shape, generator=gen)
    return torch.where(mask, torch.zeros_like(x), noisy), mask


def pretext_loss(module: nn.Module, x: torch.Tensor, gen: torch.Generator, places: int = 0) -> torch.Tensor:
    """Squared error of the first output map against the clean grey image: in full on the blanked
    pixels, a tenth of it on the visible ones (which only need denoising). ``places``: the last
    channels are position channels (:mod:`.position`), given as they are."""
    image = x[:, : x.shape[1] - places]
    damaged, mask = damage(image.cpu(), gen)
    damaged = torch.cat([damaged, x[:, image.shape[1] :].cpu()], 1) if places else damaged
    damaged, mask = damaged.to(x.device), mask.to(x.device)
    target = image.mean(1, keepdim=True)
    err = (module(damaged)[:, :1].float() - target) ** 2
    return err[mask].mean() + 0.1 * err.mean() if mask.any() else err.mean()


def reset_head(module: nn.Module) -> None:
    """Re-initialise the last convolution (the output layer of the map models)."""
    convs = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if convs:
        convs[-1].reset_parameters()


def crops(images: Sequence[np.ndarray], patch: tuple[int, ...], n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random crops of ``patch`` from normalised ``(C, *spatial)`` images (padded by reflection
    where smaller), randomly mirrored, as a ``(n, C, *patch)`` batch."""
    weights = np.array([im[0].size for im in images], np.float64)
    out = []
    for i in rng.choice(len(images), size=n, p=weights / weights.sum()):
        im = pad_end(images[i], patch)
        starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(im.shape[1:], patch)]
        c = torch.from_numpy(np.ascontiguousarray(im[(slice(None), *(slice(a, a + p) for a, p in zip(starts, patch)))]))
        for axis in range(1, c.ndim):
            if rng.random() < 0.5:
                c = c.flip(axis)
        out.append(c)
    return torch.stack(out)


def pretrain(
    module: nn.Module,
    images: Sequence[np.ndarray],
    patch: tuple[int, ...],
    batch_size: int,
    *,
    lr: float,
    device: torch.device,
    steps: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    cancel: Callable[[], bool] | None = None,
    reset: bool = True,
    places: int = 0,
) -> Work[int]:
    """Pre-train ``module`` on normalised ``(C, *spatial)`` images for ``steps`` steps or ``seconds``
    (whichever comes first), then re-initialise its output layer (unless ``reset`` is False).

    Yields:
        :class:`Progress` per step (``metrics["pretext_loss"]``).

    Returns:
        The number of steps made.

    Raises:
        ValueError: an object model (Mask R-CNN, SOLO, DeepMask), which has no map to restore into.
    """
    if isinstance(module, ObjectModel):
        raise ValueError(
            "Self-supervised pre-training needs a map model (UNet, FCN, DeepLab, ...), not an object model."
        )
    if steps is None and seconds is None:
        raise ValueError("Give pre-training a number of steps or seconds.")
    rng = np.random.default_rng(seed + 7)
    gen = torch.Generator().manual_seed(seed + 7)
    module.to(device).train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    t0, step = time.monotonic(), 0
    total = steps or 10**9
    while step < total:
        elapsed = time.monotonic() - t0
        if (seconds is not None and elapsed > seconds) or (cancel is not None and cancel()):
            break
        frac = max(step / total, elapsed / seconds if seconds else 0.0)
        for g in opt.param_groups:  # short warm-up, then cosine
            g["lr"] = lr * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        x = crops(images, patch, batch_size, rng).to(device)
        loss = pretext_loss(module, x, gen, places)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        shown = steps or max(step, round(step * (seconds or 1) / max(time.monotonic() - t0, 1e-6)))
        yield Progress(
            step,
            shown,
            f"pre-training on the images (self-supervised) · loss {float(loss):.3f}",
            {"pretext_loss": float(loss)},
        )
    if reset:
        reset_head(module)
    return step


def pretrain_share(
    module: nn.Module,
    pool: Sequence[np.ndarray],
    patch: tuple[int, ...],
    batch_size: int,
    lr: float,
    device: torch.device,
    cfg: Any,
    total: int,
    cancel: Callable[[], bool] | None,
    places: int = 0,
) -> Work[float | None]:
    """Training's pre-training: ``cfg.pretrain`` (a :class:`~.training.TrainConfig`) of its time
    budget, or of its ``total`` steps without one, on ``pool``; reported as step 0 of ``total``.

    Returns:
        The time budget left for training on the labels (``None`` without a budget).
    """
    t0, budget = time.monotonic(), cfg.time_budget
    work = pretrain(
        module,
        pool,
        patch,
        batch_size,
        lr=lr,
        device=device,
        steps=None if budget else max(1, round(cfg.pretrain * total)),
        seconds=cfg.pretrain * budget if budget else None,
        seed=cfg.seed,
        cancel=cancel,
        places=places,
    )
    steps = yield from map_progress(work, lambda p: Progress(0, total, p.note, p.metrics))
    log.info("pre-trained for %d steps in %.0f s", steps, time.monotonic() - t0)
    return max(1.0, budget - (time.monotonic() - t0)) if budget else budget
