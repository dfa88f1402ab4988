"""Training with DistributedDataParallel: 2 CPU processes on gloo against 1 process with the global batch.

The two processes are plain subprocesses given torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT on a free port), so :func:`~napari_segsuite.distributed.init_from_env` is
what joins them. Crops are made deterministic (the global batch of step k is fixed; rank r takes its
r-th share) and augmentation is off, so both runs see the same pixels at every step.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_segsuite import distributed as ddp

#: The worker: trains a tiny UNet (base_filters=4, depth=2) on 64 x 64 crops and writes the step
#: losses and final weights of rank 0. ``run`` is also called in the test process (one process).
WORKER = r'''
import json, sys
import numpy as np
import torch
from napari_segsuite import distributed as ddp, training
from napari_segsuite import sample_data as sd
from napari_segsuite.model_files import new_model
from napari_segsuite.progress import drive
from napari_segsuite.tasks import semantic


def fixed_crops(train, patch, n, rng, augment, noise=None, index=None, mirror_axes=None, places=0, _step=[0]):
    """Step k's global batch (n x world size crops) is fixed; this process takes its share."""
    g = np.random.default_rng(1000 + _step[0])
    _step[0] += 1
    xs, ys = [], []
    for _ in range(n * ddp.world_size()):
        s = train[int(g.integers(len(train)))]
        a, b = (int(g.integers(0, d - p + 1)) for d, p in zip(s.x.shape[1:], patch))
        xs.append(torch.from_numpy(s.x[:, a : a + patch[0], b : b + patch[1]].copy()))
        ys.append(torch.from_numpy(s.y[a : a + patch[0], b : b + patch[1]].copy()))
    mine = slice(ddp.rank() * n, (ddp.rank() + 1) * n)
    return torch.stack(xs[mine]), torch.stack(ys[mine])


def run(out, batch, norm, steps, ce_only):
    ddp.init_from_env("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial weights in every run
    data = [sd.nuclei_2d(seed=s, shape=(96, 96)) for s in range(3)]
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    if not norm:  # no batch statistics: the same steps as one process with the global batch
        for parent in list(model.module.modules()):
            for name, child in parent.named_children():
                if isinstance(child, torch.nn.BatchNorm2d):
                    setattr(parent, name, torch.nn.Identity())
    cfg = training.TrainConfig(
        epochs=2, steps_per_epoch=steps, batch_size=batch, patch_size=64, lr=3e-3, augment=False,
        prefetch=False, calibrate=False, device="cpu", amp=False, patience=0, val_fraction=0.34,
    )
    real, training.crop_batch = training.crop_batch, fixed_crops
    loss_fn = semantic.loss_fn
    if ce_only:  # a mean over samples and pixels: exactly what DDP's averaged gradients give
        semantic.loss_fn = lambda logits, y: torch.nn.functional.cross_entropy(logits.float(), y)
    try:
        losses = []
        stop = (lambda: len(losses) >= 5) if ddp.is_main() else None  # rank 0's cancel stops every process
        work = training.train(model, [d["image"] for d in data], [d["semantic"] for d in data], cfg, cancel=stop)
        result = drive(work, lambda p: losses.append(p.metrics["loss"]) if "lr" in p.metrics else None)
    finally:
        training.crop_batch, semantic.loss_fn = real, loss_fn
        fixed_crops.__defaults__[-1][0] = 0
    if ddp.is_main():
        weights = {k: v.flatten().tolist() for k, v in result.model.module.state_dict().items() if v.is_floating_point()}
        stats = {"losses": losses, "weights": weights, "stopped": result.stopped,
                 "epochs": len(result.history), "steps": result.model.card.training["steps"]}
        with open(out, "w") as f:
            json.dump(stats, f)
    ddp.shutdown()


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5] == "1")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


def _runs(tmp_path: Path, batch: int, norm: bool, steps: int, ce_only: bool) -> tuple[dict, dict]:
    """Rank 0's record of 2 processes with ``batch`` crops each, and that of 1 process (this one, while
    the two start) with ``2 * batch``."""
    assert not ddp.launched()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out, port = tmp_path / "ddp.json", _free_port()
    args = [sys.executable, str(script), str(out), str(batch), str(int(norm)), str(steps), str(int(ce_only))]
    procs = [subprocess.Popen(args, env=_env(r, 2, port), stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        ns: dict = {"__name__": "worker"}
        exec(compile(WORKER, "worker", "exec"), ns)
        ns["run"](tmp_path / "one.json", 2 * batch, norm, steps, ce_only)
    finally:
        errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    return json.loads(out.read_text()), json.loads((tmp_path / "one.json").read_text())


def _compare(two: dict, one: dict) -> tuple[float, float]:
    """Largest relative difference of the step losses and largest absolute difference of the weights."""
    a, b = np.array(two["losses"]), np.array(one["losses"])
    assert a.shape == b.shape
    w = max(float(np.abs(np.array(two["weights"][k]) - np.array(one["weights"][k])).max()) for k in one["weights"])
    return float(np.max(np.abs(a - b) / np.abs(b))), w


def test_two_gloo_processes_match_one_with_the_global_batch(tmp_path):
    """2 processes x 2 crops = 1 process x 4 crops, step by step (epochs of 3 steps, cancelled by rank 0 alone after 5, 2 validations), for a loss
    that is a mean over samples (cross-entropy) and a network without batch statistics: DDP's averaged
    gradients are then the global batch's. Tolerance: relative loss difference 1e-4, weights 1e-5
    (float sums in another order; measured: about 1e-7 and 1e-8)."""
    two, one = _runs(tmp_path, 2, False, 3, True)
    assert two["steps"] == one["steps"] == 5 and two["epochs"] == one["epochs"] == 2
    assert two["stopped"] == one["stopped"] == "cancelled"
    rel, w = _compare(two, one)
    print(f"cross-entropy, no norm: rel loss diff {rel:.2e}, weight diff {w:.2e}")
    assert rel < 1e-4, (two["losses"], one["losses"])
    assert w < 1e-5


def test_broadcast_stop_and_sync_with_one_process(monkeypatch):
    """Without a process group every agreement returns what it is given and sends nothing; another
    rank crops with a generator of its own."""
    assert not ddp.active() and ddp.is_main() and ddp.world_size() == 1
    assert ddp.broadcast_stop("time budget", 0.5) == ("time budget", [0.5])
    rng = np.random.default_rng(0)
    sync, crops = ddp.Sync.begin(5, rng)
    assert crops is rng and sync.seed == 5 and sync.main  # one process: the crops of a run without DDP
    assert sync.step("", 1e-3) == ("epochs", 1e-3)
    assert sync.step("cancelled", 1e-3) == ("cancelled", 1e-3)
    assert sync.settle("early stopping") == "early stopping"
    assert sync.mean(0.25) == 0.25
    module = torch.nn.Conv2d(1, 1, 1)
    assert sync.wrap(module, lambda m, x, y: m(x).sum(), [], (8, 8), torch.device("cpu")) is module
    monkeypatch.setattr(ddp, "rank", lambda: 1)  # rank 1 of a group: crops of its own, the split's rng untouched
    other, crops = ddp.Sync.begin(5, rng)
    assert crops is not rng and other.seed != 5 and not other.main
    assert crops.integers(1 << 30) != np.random.default_rng(5).integers(1 << 30)
    assert ddp.strip_gpus(["train", "--gpus", "2", "--out", "m", "--gpus=3"]) == ["train", "--out", "m"]


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "tol"), [(False, 1e-2), (True, 5e-2)])
def test_per_process_dice_and_batch_norm(tmp_path, norm, tol):
    """The real loss (cross-entropy + soft Dice) with and without batch norm. The Dice term pools the
    batch and batch norm normalises with the batch's statistics, both per process under DDP (2 crops
    each, not 4), so the curves differ a little from the global batch's. Measured over 5 steps: without
    norm a relative loss difference of 1.3e-3 (weights 6e-6); with batch norm 8e-3 (weights 4e-3)."""
    two, one = _runs(tmp_path, 2, norm, 3, False)
    rel, w = _compare(two, one)
    print(f"cross-entropy + Dice, norm {norm}: rel loss diff {rel:.2e}, weight diff {w:.2e}")
    assert rel < tol, (two["losses"], one["losses"])


def test_unused_parameters_are_found_and_the_trial_step_leaves_no_trace():
    """A head the loss never reaches asks for ``find_unused_parameters``; batch-norm statistics,
    gradients and torch's random state are as before the trial step."""
    from napari_segsuite import sample_data as sd
    from napari_segsuite.model_files import new_model
    from napari_segsuite.samples import prepare_samples
    from napari_segsuite.tasks import get_task

    d = sd.nuclei_2d(seed=0, shape=(64, 64))
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    samples = prepare_samples(model, [d["image"]], [d["semantic"]], None, None, None)
    task, module = get_task(model.card.kind), model.module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng_state = torch.random.get_rng_state()
    used = lambda m, x, y: task.loss(m, x, y, model.card)  # noqa: E731
    assert not ddp.has_unused_parameters(module, used, samples, (64, 64), torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    module.spare = torch.nn.Conv2d(1, 1, 1)  # a parameter no loss reaches
    rng_state = torch.random.get_rng_state()
    assert ddp.has_unused_parameters(module, used, samples, (64, 64), torch.device("cpu"))
    assert all(p.grad is None for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items() if k in before)
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def _tiny_data(tmp_path: Path, model: str = "unet") -> list[str]:
    from napari_segsuite import sample_data as sd
    from napari_segsuite.io import write_labels

    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    for i in range(3):
        s = sd.nuclei_2d(seed=i, shape=(96, 96))
        write_labels(tmp_path / "img" / f"n{i}.tif", s["image"])
        write_labels(tmp_path / "lab" / f"n{i}.tif", s["semantic"] if model == "unet" else s["instances"])
    return [
        "train", "--model", model, "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
        "--out", str(tmp_path / "model"), "--patch-size", "64", "--batch-size", "2",
        "--device", "cpu",
        *(["--arg", "base_filters=4", "--arg", "depth=2"] if model == "unet" else ["--arg", "width=16"]),
    ]  # fmt: skip


def test_gpus_runs_the_same_command_under_torchrun(tmp_path, monkeypatch):
    """``--gpus 2`` hands the command, without ``--gpus``, to torch's launcher."""
    from napari_segsuite import cli

    calls = []
    monkeypatch.setattr(ddp, "launch", lambda argv, n: calls.append((list(argv), n)) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["train", "--model", "unet", "--images", "i", "--labels", "l", "--out", str(tmp_path / "m"), "--gpus", "2"]
    assert cli.main(argv) == 0
    assert calls == [(argv, 2)]
    cmd: list[str] = []
    monkeypatch.undo()  # the real launch, with subprocess.call replaced
    monkeypatch.setattr(ddp.subprocess, "call", lambda c: cmd.extend(c) or 0)
    assert ddp.launch(argv, 2) == 0
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:] == ["napari_segsuite.cli", *argv[:-2]]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["unet", "solo"])
def test_cli_trains_with_two_cpu_processes(tmp_path, model):
    """``segsuite train --gpus 2 --device cpu``: torchrun, 2 gloo processes, one model written, one summary
    printed; a time budget and early stopping decided on rank 0 end both processes. SOLO: an object
    model, whose loss DDP runs as the forward pass."""
    argv = [*_tiny_data(tmp_path, model), "--gpus", "2", "--epochs", "100", "--time-budget", "6", "--patience", "1"]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [sys.executable, "-m", "napari_segsuite.cli", *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Saved ") == 1, done.stdout
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    assert card["training"]["processes"] == 2 and card["training"]["steps"] >= 10
    assert card["training"]["stopped"] in ("time budget", "early stopping")  # rank 0's decision, every process stopped
