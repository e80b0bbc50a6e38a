"""The training loop every solution uses: optimisers, schedules, AMP, DDP, checkpoints, resume.

Single process by default; under torchrun (WORLD_SIZE > 1) it runs DistributedDataParallel:
    torchrun --standalone --nproc_per_node=8 -m solutions.dylan.train --config ...          (one node)
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d --rdzv_id=JOB \\
             --rdzv_endpoint=HOST:29500 -m solutions.dylan.train --config ...               (two nodes)
(HOST: node 0's address; JOB: one id per run, the same on every node; --work on a filesystem all
nodes share.) The recipe's global batch is split over the whole world (config.batch_split).
A checkpoint is written atomically after every epoch (last.pt) with the optimiser, scheduler
position, history and RNG state, so a rerun continues exactly where an interrupted run stopped;
inside an epoch, every `checkpoint_minutes`, another (step.pt) records the step it was taken at
and the epoch's running figures: a rerun skips the batches already trained (their indices only,
no image is read) and goes on with the same batches in the same order, as if never stopped.
`fit` hands back the model in memory (no reload). Solutions build their datasets and loaders
(`train_loader`, `eval_loader`) and give `fit` a batch function (raw batch -> Batch).

What a run says (rank 0): a dated progress line within an epoch (`log_every_steps`,
`log_every_seconds`, `log_epoch_parts`: step, img/s, loss, lr, the epoch's ETA), one line per
epoch, the epochs as CSV (summary.csv) and JSON lines (epochs.jsonl), and with `tensorboard`
event files in the fold's tensorboard/. None of it adds a GPU sync per step: a progress line
reads the epoch's figures once, every decision between lines is time.monotonic on the host.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import build_augment
from .checkpoint import (STEP_CHECKPOINT, load_checkpoint, remaining_batches, resume_fit, rng_state, save_checkpoint,  # noqa: F401
                         set_rng_state, write_summary)
from .config import TrainConfig
from .data import EpochSampler, batch_pixels, normalize_on_device
from .errors import SkipLog, log
from .models import normalization
from .progress import Watch, bar, iso_now, run_label, stamp, summary_writer_class, write_epochs_jsonl

# ----------------------------------------------------------------------------- registries

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {  # (params, config, **kw): kw is fused=True on CUDA where FUSED
    "sgd": lambda p, c, **kw: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, **kw),
    "nag": lambda p, c, **kw: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=True, **kw),
    "nadam": lambda p, c, **kw: torch.optim.NAdam(p, lr=c.lr, weight_decay=c.weight_decay, **kw),
    "adam": lambda p, c, **kw: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay, **kw),
    "adamw": lambda p, c, **kw: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay, **kw),
}
FUSED = {"sgd", "nag", "adam", "adamw"}  # torch has a fused CUDA kernel for these (one launch for every parameter); NAdam: foreach

SCHEDULES: dict[str, Callable[[TrainConfig, float], float]] = {
    "constant": lambda c, e: 1.0,
    "step": lambda c, e: c.lr_gamma ** sum(e >= m for m in c.lr_milestones),
    # the LR after each milestone as recorded (lr_values), for hand-set schedules that no single gamma fits
    "piecewise": lambda c, e: ([1.0] + [v / c.lr for v in c.lr_values])[sum(e >= m for m in c.lr_milestones)],
    "cosine": lambda c, e: 0.5 * (1 + math.cos(math.pi * min(e / max(c.epochs, 1), 1.0))),
}


def lr_factor(cfg: TrainConfig, epoch: float) -> float:
    """Multiplier of cfg.lr at a (fractional) epoch: linear warm-up, then the named schedule."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose from {sorted(SCHEDULES)}")
    warm = min(1.0, (epoch + 1e-9) / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
    return warm * SCHEDULES[cfg.schedule](cfg, epoch)


def build_optimizer(cfg: TrainConfig, model: nn.Module, cuda: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimiser over the trainable parameters; its fused kernel on CUDA (same update)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose from {sorted(OPTIMIZERS)}")
    kw = {"fused": True} if cuda and cfg.optimizer in FUSED else {}
    return OPTIMIZERS[cfg.optimizer]([p for p in model.parameters() if p.requires_grad], cfg, **kw)


# ----------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _leave_process_group() -> None:
    """A gloo process exiting with its process group alive aborts ("terminate called without an
    active exception"); every collective is over by then, so no barrier is needed."""
    if dist.is_initialized():
        dist.destroy_process_group()


def setup_runtime() -> Runtime:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: then one GPU per process, NCCL (gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        if not dist.is_initialized():  # one process group for the process (several recipes may run in it)
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            atexit.register(_leave_process_group)
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        return Runtime(device, dist.get_rank(), world)
    return Runtime(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def autocast(cfg: TrainConfig, runtime: Runtime):
    """bf16/fp16 autocast on CUDA; CPU runs in fp32 (reproducible, and fast enough for mini)."""
    enabled = runtime.cuda and cfg.amp != "none"
    dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=runtime.device.type, dtype=dtype, enabled=enabled)


# ----------------------------------------------------------------------------- batches and loaders


@dataclass
class Batch:
    """What a task hands the loop and the inference driver: inputs on the device (a tensor, or a
    tuple of the model's arguments), integer targets (-1 unknown), and `ok`: the sample's input is
    usable (a corrupt image, a product with no decodable view is not)."""

    inputs: torch.Tensor | tuple
    target: torch.Tensor
    ok: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """Samples the loss and the metrics count: usable input and a known label."""
        return self.ok & (self.target >= 0)


BatchFn = Callable[[dict, Runtime], Batch]


def image_batch(mean, std, channels_last: bool, size: int = 0) -> BatchFn:
    """One image per sample (uint8 pixels, or JPEG bytes decoded on the device) -> normalised on the device."""

    def to_batch(raw: dict, runtime: Runtime) -> Batch:
        pixels, ok = batch_pixels(raw, size, runtime.device)
        x = normalize_on_device(pixels, mean, std, channels_last and runtime.cuda)
        return Batch(x, raw["label"].to(runtime.device, non_blocking=True), ok)

    return to_batch


def train_loader(dataset: Dataset, cfg: TrainConfig, runtime: Runtime, collate: Callable, batch_sampler: Sampler | None = None) -> DataLoader:
    """Shuffled from (seed, epoch), equal shards per rank; a solution may bring its own batches
    (products grouped by image count). The ragged last batch is dropped (a batch of one breaks
    BatchNorm) unless it is the only one."""
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=cfg.num_workers, pin_memory=runtime.cuda)
    sampler = EpochSampler(len(dataset), cfg.seed, cfg.max_images_per_epoch, runtime.rank, runtime.world)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                      pin_memory=runtime.cuda, drop_last=len(sampler) > cfg.batch_size)


def eval_loader(dataset: Dataset, cfg: TrainConfig, runtime: Runtime, collate: Callable, batch_sampler: Sampler | None = None) -> DataLoader:
    """The per-epoch validation metric's batches, sharded over ranks, in order."""
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=cfg.num_workers, pin_memory=runtime.cuda)
    sampler = EpochSampler(len(dataset), cfg.seed, 0, runtime.rank, runtime.world, shuffle=False)
    return DataLoader(dataset, batch_size=cfg.eval_batch_size, sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                      pin_memory=runtime.cuda)


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    for s in (loader.batch_sampler, loader.sampler):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)


# ----------------------------------------------------------------------------- the loop


def prepare_model(cfg: TrainConfig, model: nn.Module, runtime: Runtime) -> nn.Module:
    model.to(runtime.device)
    if cfg.channels_last and runtime.cuda:
        model.to(memory_format=torch.channels_last)
    return model


def fit(cfg: TrainConfig, model: nn.Module, train: DataLoader, val: DataLoader | None, to_batch: BatchFn, out_dir: Path, runtime: Runtime,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """Train for cfg.epochs; checkpoint, validate and log each epoch (and checkpoint every
    cfg.checkpoint_minutes inside one); resume from last.pt, or mid-epoch from step.pt (unless
    cfg.resume is off). Returns the trained model. `transform` (default: the recipe's `augment`)
    acts on training inputs only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.tensorboard:
        summary_writer_class()  # on every rank, before any step: a missing package stops the run now
    torch.manual_seed(cfg.seed)
    prepare_model(cfg, model, runtime)
    optimizer = build_optimizer(cfg, model, runtime.cuda)
    scaler = torch.amp.GradScaler(enabled=runtime.cuda and cfg.amp == "fp16")
    start_epoch, history, partial = resume_fit(cfg, model, optimizer, scaler, out_dir, runtime)
    at_step = start_epoch * max(1, math.ceil(len(train) / cfg.accum_steps)) + (partial["step"] if partial is not None else 0)
    watch = fit_watch(cfg, model, optimizer, scaler, out_dir, runtime, history, at_step)
    net = training_net(cfg, model, runtime)
    transform = transform or train_transform(cfg, model)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            _set_epoch(train, epoch)
            resume, partial = partial, None
            t0 = time.monotonic() - (float(resume["seconds"]) if resume is not None else 0.0)
            figures = train_one_epoch(cfg, net, train, optimizer, scaler, to_batch, runtime, epoch, transform, watch=watch, resume=resume)
            seconds = time.monotonic() - t0
            val_loss, val_acc = evaluate(cfg, model, val, to_batch, runtime) if val is not None else (float("nan"), float("nan"))
            history.append(epoch_row(cfg, epoch, figures, val_loss, val_acc, seconds))
            if runtime.is_main:
                save_checkpoint(out_dir / "last.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                                      "rng": rng_state(), "epoch": epoch, "history": history, "config": asdict(cfg)})
                (out_dir / STEP_CHECKPOINT).unlink(missing_ok=True)  # last.pt is further on
                write_summary(out_dir / "summary.csv", history)
                write_epochs_jsonl(out_dir / "epochs.jsonl", history)
                watch.end_epoch(history[-1])
            watch.reset_checkpoint_timer()
            if runtime.distributed:
                dist.barrier()
    finally:
        if watch.writer is not None:
            watch.writer.close()
    return model


def epoch_row(cfg: TrainConfig, epoch: int, figures: dict, val_loss: float, val_acc: float, seconds: float) -> dict:
    """The epoch's figures: a row of summary.csv (and, with the date it ended, of epochs.jsonl)."""
    seen = figures["samples"]
    return {"epoch": epoch, "lr": cfg.lr * lr_factor(cfg, epoch + 1 - 1e-9), "train_loss": round(figures["train_loss"], 5),
            "train_acc": round(figures["train_acc"], 5), "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5), "samples": seen,
            "samples_per_step": round(figures["samples_per_step"], 1), "unusable_inputs": figures["unusable_inputs"],
            "image_tiles": figures["image_tiles"], "samples_per_s": round(seen / seconds, 1), "seconds": round(seconds, 1), "date": iso_now()}


def fit_watch(cfg: TrainConfig, model: nn.Module, optimizer, scaler, out_dir: Path, runtime: Runtime, history: list, at_step: int) -> Watch:
    """fit's Watch: TensorBoard on rank 0 (resumed: the lost run's events past `at_step` dropped),
    rank 0's clock told to every rank, and step.pt with every rank's running figures."""
    step_file, label = out_dir / STEP_CHECKPOINT, run_label(cfg, out_dir)
    writer = summary_writer_class()(str(out_dir / "tensorboard"), purge_step=at_step or None) if cfg.tensorboard and runtime.is_main else None

    def agree(flag: bool) -> bool:
        told = torch.tensor(int(flag), device=runtime.device)
        dist.broadcast(told, 0)
        return bool(told)

    def save(epoch: int, batch: int, step: int, steps: int, seconds: float, figures: EpochFigures) -> None:
        rows = figures.state().reshape(1, -1)
        if runtime.distributed:
            parts = [torch.empty_like(rows) for _ in range(runtime.world)]
            dist.all_gather(parts, rows)
            rows = torch.cat(parts)
        if runtime.is_main:
            save_checkpoint(step_file, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                        "rng": rng_state(), "epoch": epoch, "batch": batch, "step": step, "steps": steps, "figures": rows.cpu(),
                                        "seconds": seconds, "world": runtime.world, "history": history, "config": asdict(cfg)})
            log.info("%s %s: mid-epoch checkpoint %s at epoch %d step %d/%d", stamp(), label, step_file, epoch + 1, step, steps)

    return Watch(cfg, label, runtime.is_main, runtime.world, writer, save, agree if runtime.distributed else None)


def training_net(cfg: TrainConfig, model: nn.Module, runtime: Runtime) -> nn.Module:
    """What the loop steps: DDP under torchrun (gradients as views of its buckets, no copy; a static
    graph when every micro-step syncs), compiled when the recipe says `compile: true`. `model`
    itself stays the plain module: checkpoints and evaluation never see the wrappers."""
    net = model
    if runtime.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.cuda else None,
                                                  gradient_as_bucket_view=True, static_graph=cfg.accum_steps == 1)
    return torch.compile(net) if cfg.compile else net


def train_transform(cfg: TrainConfig, model: nn.Module) -> Callable | None:
    """The recipe's on-device training augmentation, with the network's normalisation."""
    return build_augment(cfg.augment, cfg.augment_args, *normalization(model))


def micro_step(cfg: TrainConfig, net: nn.Module, batch: Batch, transform, scaler, runtime: Runtime, sync_grads: bool = True) -> tuple:
    """One micro-batch: augment, autocast forward, masked cross-entropy, scaled backward (the
    gradient all-reduce only when `sync_grads`). Returns (loss, logits, inputs): nothing leaves the
    device (bench/bench_gpu.py times exactly this)."""
    inputs = transform(batch.inputs) if transform is not None else batch.inputs
    with contextlib.nullcontext() if sync_grads or not runtime.distributed else net.no_sync():
        with autocast(cfg, runtime):
            logits = forward(net, inputs)
        loss = masked_cross_entropy(logits.float(), batch.target, batch.valid, cfg.label_smoothing)
        scaler.scale(loss / cfg.accum_steps).backward()
    return loss, logits, inputs


def optimizer_step(optimizer, scaler) -> None:
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def forward(net: nn.Module, inputs: torch.Tensor | tuple) -> torch.Tensor:
    """A task's inputs are one tensor or a tuple of the model's arguments (e.g. features, mask)."""
    return net(*inputs) if isinstance(inputs, tuple) else net(inputs)


LOG_EVERY = 50  # micro-steps between the epoch figures' one GPU-to-CPU sync (progress line, unusable inputs' _ids)


class EpochFigures:
    """The epoch's running sums, kept on the device: a micro-step adds to them without waiting for
    the GPU; `sync` reads them (one transfer) for a log line and at the end of the epoch."""

    def __init__(self, device: torch.device, skips: SkipLog, dataset):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x samples, correct
        self.seen = torch.zeros((), dtype=torch.int64, device=device)
        self.fed = self.tiles = self.steps = 0  # known on the host (shapes)
        self.skips, self.dataset, self.pending = skips, dataset, []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, batch: Batch, inputs, raw: dict, size: int) -> None:
        valid = batch.valid
        n = valid.sum()
        self.sums += torch.stack([loss.detach().double() * n, ((logits.detach().argmax(1) == batch.target) & valid).sum().double()])
        self.seen += n
        self.fed += len(batch.target)
        self.tiles += image_tiles(inputs, size)
        self.pending.append((raw["pos"], ~batch.ok))

    def sync(self) -> tuple[float, float, int]:
        """(mean loss, accuracy, usable samples) so far; names the unusable inputs met since the last sync."""
        if self.pending:
            bad = torch.cat([b for _, b in self.pending]).cpu().numpy()
            if bad.any():
                pos = torch.cat([p for p, _ in self.pending]).numpy()[bad]
                ids = self.dataset.product_ids(pos) if hasattr(self.dataset, "product_ids") else []
                self.skips.add_ids("unusable_input", f"{int(bad.sum())} training inputs could not be used (undecodable images) and add nothing to the loss",
                                   ids, count=int(bad.sum()))
            self.pending = []
        loss_sum, correct = self.sums.tolist()
        seen = int(self.seen)
        self.last = loss_sum, correct, seen
        return loss_sum / max(seen, 1), correct / max(seen, 1), seen

    def totals(self) -> tuple[float, float, int]:
        """(loss x samples, correct, usable samples) so far (one sync)."""
        self.sync()
        return self.last

    def state(self) -> torch.Tensor:
        """Every running figure in one float64 row on the device (integers below 2**53 are exact):
        what a mid-epoch checkpoint keeps so the resumed epoch's row equals an uninterrupted one's."""
        self.sync()  # the unusable inputs met so far are counted
        host = torch.tensor([self.fed, self.tiles, self.steps, self.skips.counts["unusable_input"]], dtype=torch.float64, device=self.sums.device)
        return torch.cat([self.sums, self.seen.double().reshape(1), host])

    def restore(self, row: torch.Tensor) -> None:
        row = row.to(device=self.sums.device, dtype=torch.float64)
        self.sums = row[:2].clone()
        self.seen = torch.tensor(int(row[2]), dtype=torch.int64, device=self.sums.device)
        self.fed, self.tiles, self.steps = int(row[3]), int(row[4]), int(row[5])
        if int(row[6]):
            self.skips.counts["unusable_input"] = int(row[6])


def train_one_epoch(cfg, net, loader, optimizer, scaler, to_batch: BatchFn, runtime: Runtime, epoch: int, transform=None, *,
                    watch: Watch | None = None, resume: dict | None = None) -> dict:
    """One pass; LR set per optimizer step from the fractional epoch. Under DDP the gradient
    all-reduce runs on the last micro-step of each optimizer step only (`no_sync` before it). The
    figures stay on the device between log lines. `watch`: the progress lines and mid-epoch
    checkpoints (fit's); `resume`: a mid-epoch checkpoint of this epoch to go on from (its batch,
    running figures, RNG). Returns loss, accuracy, samples and the measured samples per optimizer
    step, over all ranks."""
    net.train()
    total = len(loader)
    steps_per_epoch = max(1, math.ceil(total / cfg.accum_steps))
    skips = SkipLog(f"{cfg.name} epoch {epoch}" + (f" (rank {runtime.rank})" if runtime.distributed else ""), max_logged=0)
    figures = EpochFigures(runtime.device, skips, loader.dataset)
    start = int(resume["batch"]) if resume is not None else 0
    if resume is not None:
        figures.restore(resume["figures"][runtime.rank])
    batches = iter(remaining_batches(loader, start) if start else loader)  # starting a loader draws its workers' seed from the RNG ...
    if resume is not None:
        set_rng_state(resume["rng"])  # ... so the RNG goes back to the step's after it: dropout, augmentations as uninterrupted
    if watch is not None:
        watch.start_epoch(epoch, steps_per_epoch, figures, float(resume["seconds"]) if resume is not None else 0.0)
    progress = bar(total, f"{cfg.name} epoch {epoch}", "batch", enabled=runtime.is_main, every=None)  # the epoch line is the log
    if start:
        progress.update(start)
    optimizer.zero_grad(set_to_none=True)
    for i, raw in enumerate(batches, start):
        lr = cfg.lr * lr_factor(cfg, epoch + i // cfg.accum_steps / steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = to_batch(raw, runtime)
        last_micro = (i + 1) % cfg.accum_steps == 0 or i + 1 == total
        loss, logits, inputs = micro_step(cfg, net, batch, transform, scaler, runtime, sync_grads=last_micro)
        if last_micro:
            optimizer_step(optimizer, scaler)
            figures.steps += 1
        figures.add(loss, logits, batch, inputs, raw, cfg.crop or cfg.input_size)
        progress.update(1)
        if (i + 1) % LOG_EVERY == 0:
            mean_loss, acc, _ = figures.sync()
            progress.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{acc:.3f}")
            if watch is not None:
                watch.poll()
        if last_micro and watch is not None and i + 1 < total:  # between optimizer steps: no gradient pending
            if watch.line_due(figures.steps):
                watch.line(figures.steps, figures, lr)
            if watch.checkpoint_due():
                watch.checkpoint(i + 1, figures)
    progress.close()
    loss, acc, seen = _reduce(runtime, *figures.sync())
    skips.report()
    fed_all = _reduce(runtime, 0.0, 0.0, figures.fed)[2]
    unusable = _reduce(runtime, 0.0, 0.0, skips.counts["unusable_input"])[2]
    tiles = _reduce(runtime, 0.0, 0.0, figures.tiles)[2]
    return {"train_loss": loss, "train_acc": acc, "samples": seen, "samples_per_step": fed_all / max(figures.steps, 1), "unusable_inputs": unusable,
            "image_tiles": tiles}


def image_tiles(inputs: torch.Tensor | tuple, size: int) -> int:
    """Image-sized tiles a batch pushes through the network (a K-image strip counts K): the compute
    an ablation holds equal. 0 for inputs that are not images (a head's stored features)."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() not in (4, 5) or size <= 0:
        return 0
    per_sample = inputs.shape[1] if inputs.dim() == 5 else 1  # [B, K, C, S, S]: a product's K tiles, composed inside the net
    return int(inputs.shape[0] * per_sample * round(inputs.shape[-2] * inputs.shape[-1] / size**2))


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy over usable samples only (a corrupt image or an unknown label adds nothing)."""
    losses = nn.functional.cross_entropy(logits, target.clamp_min(0), reduction="none", label_smoothing=smoothing)
    return (losses * valid).sum() / valid.sum().clamp_min(1)


@torch.no_grad()
def evaluate(cfg, model, loader: DataLoader, to_batch: BatchFn, runtime: Runtime) -> tuple[float, float]:
    """Sample-level loss and accuracy on a validation loader (no TTA), reduced over ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # loss x samples, correct, samples: one sync at the end
    for raw in loader:
        batch = to_batch(raw, runtime)
        with autocast(cfg, runtime):
            logits = forward(model, batch.inputs).float()
        valid = batch.valid
        n = valid.sum().double()
        sums += torch.stack([masked_cross_entropy(logits, batch.target, valid, 0.0).double() * n, ((logits.argmax(1) == batch.target) & valid).sum().double(), n])
    loss_sum, correct, seen = sums.tolist()
    loss, acc, _ = _reduce(runtime, loss_sum / max(seen, 1), correct / max(seen, 1), int(seen))
    return loss, acc


def _reduce(runtime: Runtime, loss: float, acc: float, n: int) -> tuple[float, float, int]:
    """Sample-weighted means over DDP ranks."""
    if not runtime.distributed:
        return loss, acc, n
    t = torch.tensor([loss * n, acc * n, n], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(t)
    return float(t[0] / t[2].clamp_min(1)), float(t[1] / t[2].clamp_min(1)), int(t[2])
