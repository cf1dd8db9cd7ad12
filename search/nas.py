"""Hardware-aware differentiable architecture search (first-order DARTS) over the SR3 UNet."""
from __future__ import annotations

import copy
import csv
import dataclasses
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import ModelBundle, save_model, write_json
from models.unet import UNet
from models.blocks import SKIP
from search.costs import COST_OF, SlotCosts, count_params, slot_flops
from search.data import CropSampler, has_split, load_pairs
from search.objective import TARGET_FORMS, CostLossConfig, cost_loss
from search.relax import Relaxation, TemperatureSchedule
from search.sandwich import WEIGHT_PATHS, extreme_arch, running, sandwich
from search.space import make_space
from search.supernet import (arch_parameters, derive_arch, extract, mixed_ops, search_slots, space_config,
                             weight_parameters)
from search.train import TrainConfig, Trainer

COSTS = ("none", "flops", "latency", "both")


@dataclass
class SearchConfig(TrainConfig):
    space: str = "default"
    relax: str = "softmax"
    temperature: TemperatureSchedule = field(default_factory=lambda: TemperatureSchedule(steps=0))  # 0: alpha phase
    cost: str = "flops"
    cost_loss: CostLossConfig = field(default_factory=CostLossConfig)
    lut: str | None = None  # latency lookup table (srnas profile) for latency costs
    alpha_lr: float = 3e-4
    alpha_weight_decay: float = 1e-3
    warmup_alpha: int = 200  # weights train alone this long before alpha moves
    alpha_every: int = 1
    alpha_split_every: int = 3  # data without an `alpha` split: every n-th training image feeds alpha
    cost_ramp: int = 100  # alpha steps over which the cost weight ramps from 0 to its full value
    cost_on: str = "auto"  # which architecture the cost prices: auto, probs, sample or argmax (search.costs)
    skip_cap: float = 0.5  # skip control: expected share of second units choosing skip above this is penalised
    lambda_skip: float = 1.0  # ... with this weight (0: no skip control)
    # The task loss's gradient on alpha can be far smaller than the cost's (1e-5 against 3e-3 per component on
    # the tiny preset), and Adam's per-parameter scaling then leaves the task no say. `balance_alpha` rescales
    # the task's alpha-gradient, every step, to the RMS of the gradient of the unweighted target penalty
    # |cost/target - 1|: lambda_budget = 1 then weighs cost and task alike (target forms only).
    balance_alpha: bool = False
    # How the weights' step runs the supernet: "relaxed", the relaxation's weighted sum (DARTS); "sandwich", the
    # largest, the smallest and `sandwich_drawn` drawn single-path subnets, each on its own (search.sandwich);
    # "sandwich-warmup", the sandwich during the weight warm-up and the weighted sum once alpha moves
    weight_paths: str = "relaxed"
    sandwich_drawn: int = 2
    skip_warning: float = 0.5  # warn when more than this share of second units collapse to skip
    score_crops: int = 4  # val crops per image for the supernet-vs-inherited-subnet score at the end (0: none)
    log_alpha_every: int = 10  # rows of alpha_log.csv (every slot x candidate) every n steps

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["temperature"], d["cost_loss"] = asdict(self.temperature), asdict(self.cost_loss)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchConfig":
        d = dict(d)
        d["temperature"] = TemperatureSchedule(**d.get("temperature", {}))
        d["cost_loss"] = CostLossConfig(**d.get("cost_loss", {}))
        return super().from_dict(d)  # type: ignore[return-value]

    def validate(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"unknown cost {self.cost!r}; choose from {', '.join(COSTS)}")
        if self.cost in ("latency", "both") and not self.lut:
            raise ValueError("a latency cost needs --lut (made by `srnas profile`)")
        if self.cost_on not in ("auto",) + COST_OF:
            raise ValueError(f"unknown cost_on {self.cost_on!r}; choose from auto, {', '.join(COST_OF)}")
        if self.balance_alpha and self.cost_loss.form not in TARGET_FORMS:
            raise ValueError(f"balance_alpha needs a cost form with a target ({', '.join(TARGET_FORMS)}), not "
                             f"{self.cost_loss.form!r}")
        if self.weight_paths not in WEIGHT_PATHS:
            raise ValueError(f"unknown weight_paths {self.weight_paths!r}; choose from {', '.join(WEIGHT_PATHS)}")
        if self.sandwich_drawn < 0:
            raise ValueError("sandwich_drawn must be 0 or more")
        Relaxation(self.relax)

    def priced(self) -> str:
        """What the cost term prices. The budget acts on the architecture that will be extracted (the argmax),
        or in single-path runs on the sample that ran; additive and FBNet costs on the forward's own weights
        (the Gumbel sample, or the probabilities)."""
        if self.cost_on != "auto":
            return self.cost_on
        if self.relax == "gumbel-hard":
            return "sample"
        if self.cost_loss.form in TARGET_FORMS:
            return "argmax"
        return "sample" if self.relax == "gumbel" else "probs"


def entropy(w: torch.Tensor) -> float:
    """Normalised entropy of a slot's weights: 1 = undecided, 0 = one-hot."""
    p = w.detach().clamp_min(1e-12)
    return float(-(p * p.log()).sum() / math.log(len(p))) if len(p) > 1 else 0.0


def margin(w: torch.Tensor) -> float:
    """Top-1 minus top-2 weight of a slot: how firmly the argmax is decided (1 = one-hot)."""
    top = torch.topk(w.detach(), min(2, len(w))).values
    return float(top[0] - top[1]) if len(top) > 1 else 1.0


def skip_share(arch: dict[str, str]) -> float:
    """Share of second units that chose skip: the sign of a search collapsing to skip connections."""
    unit2 = [v for k, v in arch.items() if k.endswith(".unit2")]
    return sum(v == SKIP for v in unit2) / max(len(unit2), 1)


def unit_penalty(loss: CostLossConfig, flops: torch.Tensor | None, latency: torch.Tensor | None) -> torch.Tensor:
    """|cost/target - 1| at weight 1: the scale `balance_alpha` brings the task's alpha-gradient to."""
    return cost_loss(torch.zeros((), dtype=torch.float64), dataclasses.replace(loss, form="absolute",
                                                                               lambda_budget=1.0), flops, latency)


def grads_of(value: torch.Tensor, params: list[torch.Tensor], retain: bool = False) -> list[torch.Tensor]:
    """d value / d params, zeros where it does not depend on them."""
    if not value.requires_grad:
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(value, params, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _rms(grads: list[torch.Tensor]) -> float:
    flat = torch.cat([g.detach().double().flatten() for g in grads])
    return float(flat.pow(2).mean().sqrt()) if flat.numel() else 0.0


def expected_skip_share(net: torch.nn.Module) -> torch.Tensor:
    """Mean probability of skip over the second units that offer it (differentiable in alpha)."""
    probs = [m.probs()[m.names.index(SKIP)] for m in mixed_ops(net).values() if SKIP in m.names]
    return torch.stack(probs).mean() if probs else torch.zeros(())


class SearchTrainer(Trainer):
    """Weights step on one split, alpha steps on another; costs enter alpha's loss only."""

    log_name = "search_log.csv"
    single_path = True  # hard Gumbel runs one candidate per slot; sampled widths leave channels idle

    def __init__(self, cfg: SearchConfig, run_dir: str | Path):
        cfg.validate()
        super().__init__(cfg, run_dir)
        self.cfg: SearchConfig = cfg
        if cfg.temperature.steps <= 0:
            cfg.temperature.steps = max(cfg.iters - cfg.warmup_alpha, 1)
        self.relax = Relaxation(cfg.relax, cfg.temperature).install(self.net)
        self.relax.install(self.ema.module)  # the averaged supernet is scored in its relaxed final state
        self.alpha_opt = torch.optim.Adam(arch_parameters(self.net), lr=cfg.alpha_lr, betas=(0.5, 0.999),
                                          weight_decay=cfg.alpha_weight_decay)
        self.alpha_data = CropSampler(self._alpha_pairs, cfg.patch, seed=self.rank_seed(7))
        # FLOPs are counted once, on a CPU copy when training elsewhere (the counter's inputs live on the CPU)
        counted = self.net if self.device.type == "cpu" else copy.deepcopy(self.net).cpu()
        self.flops = slot_flops(counted, self.net.cfg.image_size)
        self.latency = self._latency_costs()
        self._warned = False
        priced = self.latency or self.flops  # the sandwich's largest and smallest subnets, by the search's cost
        self._extremes = ((extreme_arch(priced, largest=True), extreme_arch(priced, largest=False))
                          if cfg.weight_paths != "relaxed" else None)

    # ---- Trainer hooks -------------------------------------------------------------------------
    def build_net(self) -> tuple[UNet, str]:
        base = self.cfg.unet_config()
        return UNet(space_config(base, make_space(self.cfg.space, base))), self.cfg.preset

    def weight_parameters(self) -> list[torch.nn.Parameter]:
        return weight_parameters(self.net)

    def train_pairs(self) -> list:
        """The weights' part of the training split; the alpha part (its own split where the data names one,
        else every n-th training image) feeds the architecture parameters only."""
        pairs = load_pairs(self.cfg.data, "train", self.cfg.lr_dir)
        if has_split(self.cfg.data, "alpha"):
            self._alpha_pairs = load_pairs(self.cfg.data, "alpha", self.cfg.lr_dir)
        else:
            n = self.cfg.alpha_split_every
            self._alpha_pairs = [p for i, p in enumerate(pairs) if i % n == n - 1] or pairs[-1:]
        alpha_names = {p.name for p in self._alpha_pairs}
        weights = [p for p in pairs if p.name not in alpha_names]
        if not weights or not self._alpha_pairs:
            raise ValueError("the search needs at least two training images: one part each for weights and alpha")
        return weights

    def weight_backward(self) -> float:
        """Relaxed: the Trainer's step through the relaxation. Sandwich: each subnet's loss on the same batch,
        backward one at a time (DDP pairs every forward with its backward); the mean of their losses."""
        mode = self.cfg.weight_paths
        if mode == "relaxed" or (mode == "sandwich-warmup" and self.step >= self.cfg.warmup_alpha):
            return super().weight_backward()
        bic, hr = self.batch(self.data)
        paths = sandwich(*self._extremes, self.net, self.cfg.sandwich_drawn, self.gen)  # checkpointed
        total = 0.0
        for arch in paths:
            with running(self.net, arch):
                loss = self.task_loss(hr, bic, self.teacher) / len(paths)
                loss.backward()
            total += float(loss.item())
        return total

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt, "alpha_opt": self.alpha_opt}

    def samplers(self) -> dict[str, CropSampler]:
        return {"data": self.data, "alpha_data": self.alpha_data}

    # ---- costs ---------------------------------------------------------------------------------
    def _latency_costs(self) -> SlotCosts | None:
        if self.cfg.cost not in ("latency", "both"):
            return None
        from search.latency import LatencyTable

        return LatencyTable.load(self.cfg.lut).slot_costs(self.net)

    def expected_costs(self, of: str = "probs") -> tuple[torch.Tensor | None, torch.Tensor | None]:
        flops = self.flops.expected(self.net, of) if self.cfg.cost in ("flops", "both") else None
        latency = self.latency.expected(self.net, of) if self.latency is not None else None
        return flops, latency

    def cost_scale(self) -> float:
        """The cost weight ramps in linearly over `cost_ramp` alpha steps after the weight warm-up, so that the
        first alpha steps compare trained candidates before the budget pulls every slot at once."""
        done = self.step - self.cfg.warmup_alpha + 1
        return min(1.0, max(done, 0) / max(self.cfg.cost_ramp, 1))

    # ---- one step ------------------------------------------------------------------------------
    def alpha_step(self) -> dict[str, float]:
        cfg = self.cfg
        bic, hr = self.batch(self.alpha_data)
        task = self.task_loss(hr, bic)  # draws this step's sample (Gumbel runs)
        flops, latency = self.expected_costs(cfg.priced())
        scale = self.cost_scale()
        skip = expected_skip_share(self.net)
        skip_term = cfg.lambda_skip * torch.relu(skip - cfg.skip_cap) if cfg.lambda_skip > 0 else 0.0
        self.alpha_opt.zero_grad(set_to_none=True)
        if cfg.balance_alpha:  # a target form: the cost is a term of its own, beside the task
            rest = cost_loss(torch.zeros((), dtype=torch.float64), cfg.cost_loss, flops, latency, scale) + skip_term
            loss = task + rest
            gain = self._balanced_backward(task, rest, flops, latency)
        else:
            loss = cost_loss(task, cfg.cost_loss, flops, latency, scale) + skip_term
            loss.backward()
        self.alpha_opt.step()
        return {"alpha_task_loss": float(task.item()), "alpha_loss": float(loss.item()), "cost_scale": scale,
                **({"task_gain": gain} if cfg.balance_alpha else {}),
                "priced_latency_ms": float(latency.detach()) * 1e3 if latency is not None else "",
                "expected_skip_share": float(skip.detach())}

    def _balanced_backward(self, task: torch.Tensor, rest: torch.Tensor, flops: torch.Tensor | None,
                           latency: torch.Tensor | None) -> float:
        """alpha.grad = g_task * RMS(g_unit) / RMS(g_task) + g_rest, where g_unit is the gradient of the
        unweighted target penalty and g_rest that of the weighted cost and skip terms (alpha alone)."""
        alphas = arch_parameters(self.net)
        unit = unit_penalty(self.cfg.cost_loss, flops, latency)
        # the alpha-only terms first: a priced Gumbel sample shares its part of the graph with the forward's,
        # which the task's backward then frees
        g_unit = grads_of(unit, alphas, retain=True)
        g_rest = grads_of(rest, alphas, retain=True)
        task.backward()  # through the network (and DDP's gradient averaging): the alphas' .grad
        g_task = [a.grad if a.grad is not None else torch.zeros_like(a) for a in alphas]
        ref, own = _rms(g_unit), _rms(g_task)
        gain = ref / own if ref > 0 and own > 0 else 1.0  # no target priced: the task's gradient as it is
        for a, gt, gr in zip(alphas, g_task, g_rest):
            a.grad = gt * gain + gr.to(gt.dtype)
        return gain

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        self.relax.step = max(0, self.step - cfg.warmup_alpha)
        row: dict[str, Any] = {"loss": self.weight_step(), "lr": self.opt.param_groups[0]["lr"],
                               "alpha_task_loss": "", "alpha_loss": "", "cost_scale": 0.0,
                               **({"task_gain": ""} if cfg.balance_alpha else {}), "priced_latency_ms": "",
                               "expected_skip_share": ""}
        if self.step >= cfg.warmup_alpha and (self.step - cfg.warmup_alpha) % cfg.alpha_every == 0:
            row.update(self.alpha_step())
        arch = derive_arch(self.net)
        with torch.no_grad():  # both costs logged whichever the loss uses
            flops = self.flops.expected(self.net)
            latency = self.latency.expected(self.net) if self.latency is not None else None
            probs = [m.probs() for m in search_slots(self.net)]
        ents, margins = [entropy(p) for p in probs], [margin(p) for p in probs]
        row.update({"temperature": self.relax.temperature, "expected_gflops": float(flops) / 1e9,
                    "expected_latency_ms": float(latency) * 1e3 if latency is not None else "",
                    "argmax_gflops": self.flops.of_arch(arch) / 1e9,
                    "argmax_latency_ms": self.latency.of_arch(arch) * 1e3 if self.latency is not None else "",
                    "mean_entropy": sum(ents) / len(ents), "mean_margin": sum(margins) / len(margins),
                    "min_margin": min(margins), "skip_share": skip_share(arch)})
        if self.is_main and (self.step % self.cfg.log_alpha_every == 0 or self.step + 1 == self.cfg.iters):
            self._log_alphas()
        self.step += 1
        self._check_collapse(row["skip_share"])
        return row

    def _check_collapse(self, share: float) -> None:
        if share > self.cfg.skip_warning and not self._warned and self.step > self.cfg.warmup_alpha:
            warnings.warn(f"search collapsing to skip: {share:.0%} of second units choose skip at step {self.step}; "
                          "consider a longer weight warm-up, a lower alpha lr or a FLOPs budget instead of a penalty",
                          stacklevel=2)
            self._warned = True

    def _log_alphas(self) -> None:
        path = self.run_dir / "alpha_log.csv"
        new = not path.exists() or self.step == 0
        with open(path, "w" if new else "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "slot", "candidate", "alpha", "weight"])
            for m in search_slots(self.net):
                weights = m.probs().detach()
                for name, a, p in zip(m.names, m.alpha.detach().tolist(), weights.tolist()):
                    w.writerow([self.step + 1, m.slot, name, f"{a:.5g}", f"{p:.5g}"])

    # ---- results -------------------------------------------------------------------------------
    def export_model(self, out_dir: str | Path | None = None) -> Path:
        """Extract the argmax subnet (EMA weights), write it as a model folder, and arch.json beside it; score
        the averaged supernet in its final relaxed state beside the inherited subnet (the discretization gap)."""
        supernet = self.ema.module
        with torch.no_grad():
            for src, dst in zip(arch_parameters(self.net), arch_parameters(supernet)):
                dst.copy_(src)
        arch = derive_arch(self.net)
        sub = extract(supernet, arch)
        out = Path(out_dir or self.run_dir / "subnet")
        record = self.arch_record(arch, sub)
        record["discretization"] = self.discretization(supernet, sub)
        bundle = ModelBundle(sub, self.diffusion, self.preset,
                             meta={"search": self.cfg.to_dict(), "search_steps": self.step, "arch": record})
        save_model(bundle, out)
        write_json(out / "arch.json", record)
        save_model(ModelBundle(supernet, self.diffusion, self.preset, meta={"search": self.cfg.to_dict()}),
                   self.run_dir / "supernet")  # for the comparison table
        write_json(self.run_dir / "arch.json", record)
        return out

    def discretization(self, supernet: UNet, sub: UNet) -> dict[str, Any] | None:
        """PSNR(Y) on val crops, DDIM 1 step: the supernet as it ended (relaxed weights, argmax widths) and the
        subnet it hands over before any fine-tuning."""
        if self.cfg.score_crops <= 0:
            return None
        from search.evaluate import EvalConfig, evaluate

        ecfg = EvalConfig(data=self.cfg.data, lr_dir=self.cfg.lr_dir, steps=[1], samplers=["ddim"],
                          crops_per_image=self.cfg.score_crops)
        scores = {}
        for name, net in (("supernet", supernet), ("inherited", sub)):
            report = evaluate(ModelBundle(net, self.diffusion, self.preset), ecfg, progress=False)
            scores[name] = report["results"][0]["psnr_y"]
        return {"split": "val", "crops": report["crops"], "sampler": "ddim", "steps": 1,
                "supernet_psnr_y": scores["supernet"], "inherited_psnr_y": scores["inherited"],
                "gap_db": scores["supernet"] - scores["inherited"]}

    def arch_record(self, arch: dict[str, str], sub: UNet) -> dict[str, Any]:
        predicted: dict[str, Any] = {"flops_per_step": self.flops.of_arch(arch), "params": count_params(sub)}
        if self.latency is not None:
            predicted["latency_per_step_s"] = {self.cfg.lut: self.latency.of_arch(arch)}
        slots = search_slots(self.net)
        probs = {m.slot: m.probs().detach() for m in slots}
        return {"choices": arch, "predicted": predicted,
                "alpha_weights": {m.slot: dict(zip(m.names, probs[m.slot].tolist())) for m in slots},
                "entropy": {k: entropy(p) for k, p in probs.items()},
                "margin": {k: margin(p) for k, p in probs.items()},
                "skip_share": skip_share(arch),
                "search": self.cfg.to_dict(), "steps": self.step}
