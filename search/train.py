"""Training of a UNet with the SR3 objective: EMA weights, progress, safetensors+JSON checkpoints, resume."""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from safetensors.torch import save_file

from models.checkpoint import CheckpointError, ModelBundle, load_model, read_json, read_tensors, save_model, write_json
from models.config import UNetConfig, preset
from models.diffusion import Diffusion, DiffusionConfig
from models.sr3_loss import sr3_loss
from models.errors import UserError
from models.unet import UNet
from search import distributed
from search.data import CropSampler, load_pairs
from search.degrade import DegradeConfig

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"


@dataclass
class TrainConfig:
    preset: str = "tiny"
    iters: int = 2000
    batch: int = 8
    patch: int = 128
    lr: float = 2e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * this
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    data: str = "builtin"
    lr_dir: str | None = None
    checkpoint_every: int = 200
    threads: int = 0  # 0: torch's default
    device: str = "cpu"  # or "cuda" (under torchrun: each rank takes the GPU of its LOCAL_RANK)
    init_model: str | None = None  # fine-tune: start from this model folder (its network and weights)
    fresh_weights: bool = False  # with init_model: its architecture and diffusion only, weights initialised anew
    teacher: str | None = None  # knowledge distillation: a model folder with the same diffusion config
    distill: float = 0.0  # weight of the distance to the teacher's output
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    unet_overrides: dict[str, Any] = field(default_factory=dict)
    degradation: DegradeConfig | None = None  # real-photo training: blur, noise and JPEG before the x2 downsample
    val_every: int = 0  # score the EMA weights on the val split every this many steps (0: never); val_log.csv
    val_crops: int = 4  # val crops per image for that curve
    focus_steps: list[int] = field(default_factory=list)  # sampler step counts the model is served at ...
    focus_share: float = 0.0  # ... and the share of items trained exactly on their noise levels

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diffusion"] = self.diffusion.to_dict()
        d["degradation"] = self.degradation.to_dict() if self.degradation else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["diffusion"] = DiffusionConfig(**d.get("diffusion", {}))
        d["degradation"] = DegradeConfig.from_dict(d.get("degradation"))
        return cls(**d)

    def unet_config(self) -> UNetConfig:
        return UNetConfig.from_dict({**preset(self.preset).to_dict(), **self.unet_overrides})


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(cfg.iters - cfg.warmup, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def training_device(name: str) -> torch.device:
    """The device to train on; a CUDA request on a machine without one is refused, not silently ignored."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda requested, but this torch build or machine has no CUDA GPU")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r}; use cpu or cuda")
    return device


def load_teacher(cfg: TrainConfig, device: torch.device | None = None) -> UNet | None:
    """The frozen teacher network; its outputs are only comparable under the same diffusion config."""
    if not cfg.teacher or cfg.distill <= 0:
        return None
    bundle = load_model(cfg.teacher)
    if bundle.diffusion.cfg.to_dict() != cfg.diffusion.to_dict():
        raise CheckpointError(f"{cfg.teacher}: the teacher's diffusion config {bundle.diffusion.cfg.to_dict()} "
                              f"differs from the run's {cfg.diffusion.to_dict()}")
    return bundle.net.eval().requires_grad_(False).to(device or "cpu")


class Trainer:
    """Owns the model, EMA, optimisers and data streams of one run folder.

    Subclasses (the architecture search) add optimisers, samplers and log columns through
    `optimizers`, `samplers` and the dict `train_step` returns; checkpointing follows them.
    """

    log_name = "train_log.csv"
    single_path = False  # some parameters sit out a step (sampled candidates): DDP must look for them

    def __init__(self, cfg: TrainConfig, run_dir: str | Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world = distributed.init("nccl" if cfg.device.startswith("cuda") else "gloo")
        self.device = training_device(cfg.device)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.net, self.preset = self.build_net()
        self.net.to(self.device)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.opt = torch.optim.AdamW(self.weight_parameters(), lr=cfg.lr, weight_decay=0.0)
        self.diffusion = Diffusion(cfg.diffusion)
        self.teacher = load_teacher(cfg, self.device)
        self.data = CropSampler(self.train_pairs(), cfg.patch, seed=self.rank_seed(0), degradation=cfg.degradation)
        self.gen = torch.Generator().manual_seed(self.rank_seed(1))
        self.step = 0
        # Under torchrun every forward/backward goes through DDP, which averages gradients across ranks.
        ddp_devices = [self.device.index] if self.device.type == "cuda" else None
        self.model = (torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ddp_devices,
                                                                find_unused_parameters=self.single_path)
                      if self.world > 1 else self.net)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rank_seed(self, stream: int, step: int = 0) -> int:
        """Different data and noise on each rank; rank 0 alone reproduces a one-process run."""
        return self.cfg.seed + stream + 1000 * self.rank + 1_000_003 * step * (self.rank > 0)

    # ---- what subclasses change ------------------------------------------------------------
    def build_net(self) -> tuple[UNet, str]:
        if self.cfg.init_model:  # fine-tuning: start from a model folder's network, weights and diffusion
            bundle = load_model(self.cfg.init_model)
            self.cfg.diffusion = bundle.diffusion.cfg
            self.inherited = {k: bundle.meta[k] for k in ("arch",) if k in bundle.meta}  # a searched subnet's record
            if self.cfg.fresh_weights:  # seeded above: the same fresh weights on every rank
                return UNet(bundle.net.cfg).train(), bundle.preset
            return bundle.net.train(), bundle.preset
        return UNet(self.cfg.unet_config()), self.cfg.preset

    def weight_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters())

    def train_pairs(self) -> list:
        return load_pairs(self.cfg.data, "train", self.cfg.lr_dir)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def samplers(self) -> dict[str, CropSampler]:
        return {"data": self.data}

    # ---- one optimisation step -------------------------------------------------------------
    def batch(self, sampler: CropSampler) -> tuple[torch.Tensor, torch.Tensor]:
        """(bicubic, HR) crops on the training device."""
        _, bic, hr = sampler.batch(self.cfg.batch)
        return torch.from_numpy(bic).to(self.device), torch.from_numpy(hr).to(self.device)

    def weight_loss(self) -> torch.Tensor:
        """The training objective on the next batch (the SR3 loss; other networks change this alone)."""
        bic, hr = self.batch(self.data)
        return self.task_loss(hr, bic, self.teacher)

    def task_loss(self, hr: torch.Tensor, bic: torch.Tensor, teacher: UNet | None = None) -> torch.Tensor:
        """The SR3 loss with this run's noise-level focus (and teacher, for the weights' step)."""
        return sr3_loss(self.diffusion, self.model, hr, bic, self.gen, teacher, self.cfg.distill,
                        self.cfg.focus_steps, self.cfg.focus_share)

    def weight_step(self) -> float:
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.cfg, self.step)
        self.opt.zero_grad(set_to_none=True)
        loss = self.weight_backward()
        torch.nn.utils.clip_grad_norm_(self.weight_parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.ema.update_parameters(self.net)
        return loss

    def weight_backward(self) -> float:
        """The weights' gradients for this step (into .grad); returns the loss."""
        loss = self.weight_loss()
        loss.backward()
        return float(loss.item())

    def train_step(self) -> dict[str, float]:
        row = {"loss": self.weight_step(), "lr": lr_at(self.cfg, self.step)}
        self.step += 1
        return row

    def run(self, progress: bool = True) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            write_json(self.run_dir / "train_config.json", self.cfg.to_dict())
        log_path = self.run_dir / self.log_name if self.is_main else Path(os.devnull)
        new_log = not log_path.exists() or self.step == 0
        progress = progress and self.is_main
        with open(log_path, "w" if new_log else "a", newline="") as f:
            writer: csv.DictWriter | None = None
            bar = tqdm(total=self.cfg.iters, initial=self.step, disable=not progress, desc=self.log_name[:-8],
                       unit="it")
            t0 = time.perf_counter()
            while self.step < self.cfg.iters:
                row = {"step": self.step + 1, **self.train_step(), "seconds": round(time.perf_counter() - t0, 2)}
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    if new_log:
                        writer.writeheader()
                writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                bar.update(1)
                if self.cfg.val_every and (self.step % self.cfg.val_every == 0 or self.step == self.cfg.iters):
                    f.flush()  # the plot beside the curve reads the training log too
                    self.log_val()
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.iters:
                    f.flush()
                    self.save()
            bar.close()
        if self.world > 1:
            self.check_ranks_agree()
        out = self.export_model() if self.is_main else self.run_dir / "model"
        distributed.barrier()
        return out

    def log_val(self) -> None:
        """One row of the validation curve (val_log.csv, drawn in val.png): the EMA weights at the served
        setting, DDIM 1 step."""
        if not self.is_main:
            return
        from search.evaluate import val_curve_row

        if not hasattr(self, "_val"):
            self._val = val_crops(self.cfg)
        row = {"step": self.step, **val_curve_row(self.ema.module, self.diffusion, *self._val)}
        path = self.run_dir / "val_log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
        from search.figures import val_curve_plot

        val_curve_plot({self.run_dir.name: self.run_dir}, self.run_dir / "val.png")

    def check_ranks_agree(self) -> None:
        """All ranks must end with identical weights (and alphas); rank 0 records the digests."""
        digests = distributed.gather(distributed.digest(self.net))
        agree = len(set(digests)) == 1
        if self.is_main:
            write_json(self.run_dir / "ddp.json", {"world_size": self.world, "step": self.step, "digests": digests,
                                                   "ranks_agree": agree})
        if not agree:
            raise RuntimeError(f"DDP ranks diverged: parameter digests {digests}")

    # ---- checkpoints -----------------------------------------------------------------------
    def save(self) -> None:
        if not self.is_main:
            return
        ckpt = self.run_dir / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        groups = {}
        for name, opt in self.optimizers().items():
            state = opt.state_dict()
            groups[name] = state["param_groups"]
            for idx, st in state["state"].items():
                tensors.update({f"{name}.{idx}.{k}": torch.as_tensor(v) for k, v in st.items()})
        tensors["rng.torch"] = self.gen.get_state()
        tensors["rng.global"] = torch.get_rng_state()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(ckpt / STATE_TENSORS))
        write_json(ckpt / STATE_JSON, {"step": self.step, "config": self.cfg.to_dict(), "param_groups": groups,
                                       "samplers": {k: s.state() for k, s in self.samplers().items()}})

    def resume(self) -> bool:
        """Continue from the run folder's checkpoint; False when there is none."""
        ckpt = self.run_dir / "checkpoint"
        if not (ckpt / STATE_JSON).exists():
            return False
        meta = read_json(ckpt / STATE_JSON)
        tensors = read_tensors(ckpt / STATE_TENSORS)
        try:
            self.net.load_state_dict(_strip(tensors, "net."))
            self.ema.load_state_dict(_strip(tensors, "ema."))
            for name, opt in self.optimizers().items():
                state: dict[int, dict[str, torch.Tensor]] = {}
                for k, v in _strip(tensors, f"{name}.").items():
                    idx, key = k.split(".", 1)
                    state.setdefault(int(idx), {})[key] = v
                opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
            for name, sampler in self.samplers().items():
                sampler.set_state(meta["samplers"][name])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{ckpt}: checkpoint does not fit this run ({str(exc)[:300]})") from None
        self.gen.set_state(tensors["rng.torch"])
        torch.set_rng_state(tensors["rng.global"])
        self.step = int(meta["step"])
        if not self.is_main:  # rank 0 saved its own streams; other ranks draw fresh ones for the rest of the run
            for i, sampler in enumerate(self.samplers().values()):
                sampler.rng = np.random.default_rng(self.rank_seed(10 + i, self.step))
            self.gen.manual_seed(self.rank_seed(1, self.step))
        return True

    def export_model(self, out_dir: str | Path | None = None) -> Path:
        """Write the EMA weights as a deployable model folder."""
        bundle = ModelBundle(self.ema.module, self.diffusion, self.preset,
                             meta={**getattr(self, "inherited", {}), "train": self.cfg.to_dict(), "train_steps": self.step})
        return save_model(bundle, out_dir or self.run_dir / "model")


def val_crops(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(lr, bicubic, hr) val crops for the training curve; a degraded run is scored on JPEG (quality 75) LR."""
    from models.imaging import to_uint8
    from search.data import scored_crops
    from search.degrade import VAL_JPEG_QUALITY

    jpeg = VAL_JPEG_QUALITY if cfg.degradation is not None else 0
    crops = scored_crops(cfg.data, "val", cfg.lr_dir, cfg.val_crops, jpeg)
    return np.stack([c[1] for c in crops]), np.stack([c[2] for c in crops]), [to_uint8(c[3]) for c in crops]


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
