"""What a training run is asked to do: :class:`TrainConfig`, the settings :func:`~.training.train`
takes (the loop itself is :mod:`.training`; the plan made from these settings and the data,
:mod:`.plan`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Training settings; the defaults suit a few to a few hundred images on a CPU or a GPU.

    Attributes:
        epochs: Upper limit on epochs.
        time_budget: Wall-clock limit in seconds (``None``: none). Training stops there and keeps the best model.
        steps_per_epoch: Optimiser steps between validations (``None``: from the data size, 10..100).
        batch_size: Crops per step (at least 2: batch norm needs two samples).
        patch_size: Crop edge in pixels (Y and X); ``None``: the model's own default (256 for most,
            128 for the object models, which then take more steps in the same time).
        patch_size_z: Crop depth for native 3D models (their batches are half ``batch_size``); ``None``:
            the model's default (32).
        lr: Peak learning rate (AdamW; linear warm-up then cosine decay over whichever of the epoch
            limit and the time budget binds first); ``None``: the model's own default (2e-3 for most).
        patience: Epochs without validation improvement before stopping early (0: never); under a time
            budget not before half of it has passed (:data:`~.training.EARLY_STOP_AFTER`). ``None`` (the default):
            20 epochs without a time budget, never under one: the user has given the time, the learning
            rate decays to its end and weight averaging settles there, and on a validation slab of
            twenty objects a plateau of the score says little (real nuclei, 300 s: the volume's held-out
            AP50 was 0.818 at the budget's end, 0.788 where patience had stopped it).
        val_fraction: Share of images (or slices) held out; with one image, a slab at one end of it
            that holds the classes the rest does (:func:`~.samples.split_samples`).
        augment: Random flips, 90-degree rotations, scaling, elastic deformation (2D), gamma, gain and
            offset, and noise.
        mirror_axes: Images of a fixed orientation: the model's spatial axes (0 = the first: Z of a
            volume, Y of an image; -1 = the last, X) along which crops may be mirrored, with no
            90-degree rotations; kept in the card, where test-time augmentation follows it. ``None``
            (the default): any orientation, as in microscopy (mirrorings along every axis, rotations
            in Y/X). A brain MRI's anatomy survives a left-right mirroring only (a bare loop on seven
            subcortical structures of a real T1 brain stalled at loss 1.19 with every mirroring and
            rotation, fell to 0.63 without): the front ends give NIfTI volumes ``(-1,)``, X after
            their reorientation to RAS+ (:func:`~.io.fixed_orientation`). Kept only where the classes
            are told apart by place (:func:`~.grid.told_apart_by_place`); classes that look different
            (tissue) gain from every mirroring whatever the file, and train with them.
        downsample: New native 3D semantic models: train (and later predict) on a grid this many
            times coarser than the volumes'; ``None`` (the default): 2 where the classes look alike
            and are told apart by place (atlas regions), the crop sees little of the volume and the
            voxels are about isotropic, else 1 (:func:`~.grid.choose_downsample`). A model being
            fine-tuned keeps its own.
        position: New semantic models: read, besides the image, where each pixel or voxel lies in it
            (:mod:`.position`); ``None`` (the default): where the images have a fixed orientation
            (``mirror_axes``) and the classes are told apart by place (:func:`~.position.choose_position`).
        device: ``"auto"`` (CUDA, MPS, CPU), or a torch device string.
        amp: Mixed precision: bfloat16 (or float16) on CUDA, bfloat16 on CPUs with AMX (:func:`~.layout.autocast_dtype`).
        seed: Seed of crops, augmentation and initial split.
        freeze_encoder: Train only what follows the encoder (:func:`~.models.base.encoder_of`): for
            fine-tuning on very few images. The encoder's batch-norm statistics still adapt to the new images.
        calibrate: After training, choose on the validation images how the model segments: the task's
            post-processing (two-class semantic models: the decision threshold; instance maps: the
            watershed settings) and whether test-time augmentation pays (:func:`~.evaluation.calibrate_inference`).
        prefetch: Make the next batch (crops, augmentation) in background threads while the model trains
            on a GPU; on the CPU batches are made between steps whatever this says
            (:func:`~.augment.background_batches`).
        average: Validate and keep an average of the weights rather than the latest weights
            (:class:`~.averaging.WeightAverage`): a moving average over about a tenth of the run at
            first, the plain mean of the weights from a quarter of the run on (real nuclei, 300 s on
            the CPU: held-out AP50 0.83-0.92 from one validation to the next with the latest weights,
            0.87-0.93 with the moving average; 500 steps, three seeds: 0.886 on average with the
            moving average alone, 0.939 with the mean). Once, at the end, the latest weights are
            scored on the same validation images and kept instead where they do better (a real brain
            atlas, 600 s in 3D, still learning fast at the end: held-out mean Dice 0.599 / 0.521 with
            the average, 0.653 / 0.614 without any, seeds 0 / 1; its validation slab lacks regions and
            chose the latest weights on seed 1 alone); the card's ``training["weights"]`` says which,
            with both scores.
        voxel_size: Physical size of a voxel ``(Z, Y, X)`` (or a pixel ``(Y, X)``) of the training images;
            ``None``: the model card's, else unknown (isotropic). Native 3D models crop thick slices
            thinly and pool them only in Y/X (see :func:`~.plan.plan`); the card keeps it.
        ignore_value: A label value that is no class (e.g. 255 in VOC exports): its pixels are left
            out of loss and metrics; kept in the card.
        pretrain: Share of the time budget spent first on self-supervised pre-training on the images,
            labelled and unlabelled (:mod:`.pretrain`); without a budget, that share of the epoch
            limit's steps made first; 0: none. New models only (a model being fine-tuned keeps what it knows).
    """

    epochs: int = 100
    time_budget: float | None = None
    steps_per_epoch: int | None = None
    batch_size: int = 4
    patch_size: int | None = None
    patch_size_z: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    patience: int | None = None
    val_fraction: float = 0.2
    augment: bool = True
    mirror_axes: tuple[int, ...] | None = None
    downsample: int | None = None
    position: bool | None = None
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    freeze_encoder: bool = False
    prefetch: bool = True
    calibrate: bool = True
    voxel_size: tuple[float, ...] | None = None
    average: bool = True
    ignore_value: int | None = None
    pretrain: float = 0.0


__all__ = ["TrainConfig"]
