"""One training loop for both stages; what differs (the loss, the validation) is injected as a `Stage`.

AdamW with warm-up and cosine decay, gradient clipping, an EMA of the weights (the EMA is what
ships), bf16 autocast on GPU, NaN-guarded steps, atomic checkpoints holding everything needed to
resume exactly, TensorBoard, a tqdm bar, and DistributedDataParallel under `torchrun` (rank 0 writes).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from wavegen.checkpoint import export_model, load_latest_state, save_state, state_files
from wavegen.config import Preset, TrainConfig
from wavegen.data import CorpusError, ResumableSampler, SegmentDataset

LossFn = Callable[..., dict[str, Tensor]]  # (model, wav, mel[, f0]) -> named losses
Batch = tuple[Tensor, ...]  # wav (B, T), mel (B, n_mels, F)[, f0 (B, F) in Hz, 0 unvoiced]


@dataclass
class Stage:
    """What one training stage injects into the loop.

    loss: (model, wav, mel[, f0]) -> dict with "loss" (the total) and any named parts, all scalars.
    validate: (ema model, held-out batch) -> named metrics (floats).
    render: (ema model, held-out batch) -> a short waveform (T,) to listen to in TensorBoard, or None.
    pitch: whether batches carry the F0 labels (the corpus must have them).
    """

    kind: str  # "teacher", "student" or "pitch": the name of the exported model
    model: nn.Module
    loss: LossFn
    validate: Callable[[nn.Module, Batch], dict[str, float]]
    render: Callable[[nn.Module, Batch], Tensor | None]
    extra_card: dict = field(default_factory=dict)
    pitch: bool = False


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str = "auto") -> Runtime:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Runtime(rank, world, torch.device("cuda", local))
    return Runtime(rank, world, torch.device("cpu"))


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to lr_min_ratio at max_steps."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def validation_batch(root: Path, preset: Preset, cfg: TrainConfig, device: torch.device,
                     pitch: bool = False) -> Batch:
    """The first `val_files` held-out utterances, their first `val_frames` frames (padded if short)."""
    data = SegmentDataset(root, preset.audio, "valid", cfg.val_frames, pitch=pitch)
    items = [data.crop(i, 0, cfg.val_frames) for i in range(min(cfg.val_files, len(data)))]
    return tuple(torch.stack(t).to(device) for t in zip(*items))


def fit(stage: Stage, preset: Preset, cfg: TrainConfig, data_root: str | Path, out: str | Path,
        resume: bool = False, device: str = "auto", progress: bool = True) -> Path:
    """Train `stage.model` for cfg.max_steps steps; returns the exported EMA model's path."""
    runtime = setup_runtime(device)
    out, data_root = Path(out), Path(data_root)
    if state_files(out) and not resume:
        raise CorpusError(f"{out} already holds checkpoints: pass --resume to continue, or choose a new --out")
    torch.manual_seed(cfg.seed)
    model = stage.model.to(runtime.device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    step, nan_skips = 0, 0
    latest = load_latest_state(out) if resume else None
    if latest is not None:
        state, path = latest
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # the config in effect shapes the schedule: a resumed run may change lr and max_steps
        scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["initial_lr"], group["lr"] = cfg.lr, cfg.lr * lr_lambda(cfg)(state["step"])
        step, nan_skips = state["step"], state["nan_skips"]
        torch.set_rng_state(state["rng"]["torch"])
        if runtime.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], runtime.device)
        if runtime.is_main:
            tqdm.write(f"resumed from {path} at step {step}")
    trained = DistributedDataParallel(model) if runtime.world > 1 else model

    dataset = SegmentDataset(data_root, preset.audio, "train", cfg.segment_frames, pitch=stage.pitch)
    sampler = ResumableSampler(dataset, runtime.world, runtime.rank, cfg.seed)
    steps_per_epoch = sampler.num_samples // cfg.batch_size
    if steps_per_epoch == 0:
        raise CorpusError(f"{data_root}: {len(dataset)} training utterances cannot fill a batch of "
                          f"{cfg.batch_size} on each of {runtime.world} process(es)")
    val_batch = validation_batch(data_root, preset, cfg, runtime.device, stage.pitch) if runtime.is_main else None
    writer = SummaryWriter(str(out / "tensorboard")) if runtime.is_main else None
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "preset.json").write_text(json.dumps(preset.to_dict(), indent=1))

    def checkpoint() -> None:
        rng = {"torch": torch.get_rng_state()}
        if runtime.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(runtime.device)
        save_state(out / "checkpoints" / f"step_{step:08d}.pt", {
            "kind": stage.kind, "preset": preset.to_dict(), "step": step, "nan_skips": nan_skips,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng})
        for old in state_files(out)[: -cfg.keep_checkpoints]:
            old.unlink()
        export_model(out / f"{stage.kind}.safetensors", ema.module, stage.kind, preset,
                     step=step, **stage.extra_card)

    if runtime.is_main and step == 0:  # the baseline the validation curve starts from
        ema.module.eval()
        _log(out, writer, 0, "valid", stage.validate(ema.module, val_batch))
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {stage.kind}", unit="step",
               disable=not (progress and runtime.is_main), dynamic_ncols=True)
    samples_per_step = cfg.batch_size * cfg.segment_frames * preset.audio.hop_length * runtime.world
    tick = time.perf_counter()
    while step < cfg.max_steps:
        epoch, position = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, skip=position * cfg.batch_size)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.num_workers, persistent_workers=False)
        for batch in loader:
            trained.train()
            batch = [t.to(runtime.device, non_blocking=True) for t in batch]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=runtime.device.type == "cuda"):
                losses = stage.loss(trained, *batch)
            optimizer.zero_grad(set_to_none=True)
            if _all_finite(losses["loss"], runtime):
                losses["loss"].backward()
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                ema.update_parameters(model)
            else:
                nan_skips += 1
                grad_norm = torch.tensor(float("nan"))
                tqdm.write(f"step {step}: non-finite loss, step skipped ({nan_skips} so far)")
            scheduler.step()
            step += 1
            bar.update(1)
            if runtime.is_main and (step % cfg.log_every == 0 or step == cfg.max_steps):
                elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                speed = samples_per_step * cfg.log_every / max(elapsed, 1e-9)
                scalars = {k: float(v.detach()) for k, v in losses.items()}
                scalars.update(grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0],
                               samples_per_s=speed, nan_skips=nan_skips)
                _log(out, writer, step, "train", scalars)
                bar.set_postfix(loss=f"{scalars['loss']:.3f}", samples_s=f"{speed:,.0f}")
            if runtime.is_main and (step % cfg.validate_every == 0 or step == cfg.max_steps):
                ema.module.eval()
                _log(out, writer, step, "valid", stage.validate(ema.module, val_batch))
                _write_media(writer, step, stage.render(ema.module, val_batch), val_batch, preset)
            if runtime.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
                checkpoint()
            if step >= cfg.max_steps:
                break
    bar.close()
    if writer is not None:
        writer.close()
    if runtime.world > 1:
        dist.barrier()
    return out / f"{stage.kind}.safetensors"


def _all_finite(loss: Tensor, runtime: Runtime) -> bool:
    """True when the loss is finite on every rank (all ranks must skip together under DDP)."""
    finite = torch.isfinite(loss.detach()).float()
    if runtime.world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _log(out: Path, writer: SummaryWriter | None, step: int, split: str, scalars: dict[str, float]) -> None:
    with open(out / "log.jsonl", "a") as handle:
        handle.write(json.dumps({"step": step, "split": split, **scalars}) + "\n")
    if writer is not None:
        for name, value in scalars.items():
            writer.add_scalar(f"{split}/{name}", value, step)


def _write_media(writer: SummaryWriter | None, step: int, wav: Tensor | None, batch: Batch, preset: Preset) -> None:
    if writer is None or wav is None:
        return
    from wavegen.audio import log_mel

    rate = preset.audio.sample_rate
    writer.add_audio("valid/generated", wav.float().cpu().clamp(-1, 1).reshape(1, -1), step, rate)
    writer.add_audio("valid/real", batch[0][0].float().cpu().reshape(1, -1), step, rate)
    for tag, mel in (("real", batch[1][0].cpu()), ("generated", log_mel(wav.float().cpu(), preset.audio))):
        image = (mel - mel.min()) / (mel.max() - mel.min()).clamp(min=1e-6)
        writer.add_image(f"valid/mel_{tag}", image.flip(0).unsqueeze(0), step, dataformats="CHW")


def read_log(out: str | Path, split: str) -> list[dict]:
    """The run's log lines of one split ("train" or "valid"), in order."""
    path = Path(out) / "log.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [row for row in map(json.loads, lines) if row["split"] == split]
