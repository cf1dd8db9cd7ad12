"""`srnas pareto`: does the search find better networks than a user would get without it, at the same latency
and the same training budget?

At each latency target (multiples of the table's fastest architecture, measured on the serving backend and
thread count) the study trains, on one budget of weight iterations:
- searched subnets: one search per relaxation and seed (its 64 px search steps count toward the budget at their
  pixel ratio), the argmax subnet scored as inherited, then fine-tuned for the rest of the budget;
- random architectures the table puts within +-5 % of the target;
- the base network uniformly narrowed to the target;
- the classic FSRCNN sized to the target, trained by direct regression;
and, once, the table's fastest architecture itself. Every point is scored on val (selection) and test (report).

Results live in a results folder (default bench/results/pareto/, committed): pareto.json holds the study's
settings, the floor's timing and one row per finished point; models/ keeps the best-on-val model of every
(kind, relaxation, target) group. A rerun skips finished points, so the study resumes from what is committed;
training runs in progress resume from their checkpoints in the run folder.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from models.checkpoint import ModelBundle, load_model, read_json, write_json
from models.classic import FSRCNN, FSRCNNConfig, is_classic, load_classic
from models.errors import UserError
from models.imaging import to_uint8
from models.unet import UNet
from search import baselines
from search.configfile import read_yaml
from search.data import DataError, eval_crops, load_pairs
from search.latency import LatencyTable
from search.relax import RELAXATIONS
from search.space import make_space
from search.supernet import space_config

ROOT = Path(__file__).resolve().parents[1]
PLACE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a label on the plot, never a path
T = TypeVar("T")
KINDS = ("searched", "random", "narrowed", "floor", "classic", "base")


@dataclass
class StudyConfig:
    preset: str = "tiny"
    space: str = "default"
    lut: str = "search/luts/tiny-default-ort-1t-epyc.json"  # the serving worker's table (1 runtime thread)
    threads: int = 1  # runtime threads per serving worker: the table must have been timed with as many
    targets: list[float] = field(default_factory=lambda: [1.25, 1.5, 2.0, 3.0])  # x the floor's measured time
    relaxations: list[str] = field(default_factory=lambda: ["softmax", "gumbel-hard"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    temperature_targets: list[float] = field(default_factory=lambda: [2.0])
    random_archs: int = 5
    random_band: float = 0.05
    baseline_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # floor, narrowed, classic
    budget: int = 1000  # weight iterations of batch x patch for every point
    train_recipe: str = "search/recipes/tiny.yaml"
    search_recipe: str = "search/recipes/search-tiny.yaml"
    search: dict[str, Any] = field(default_factory=dict)  # overrides of the search recipe
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the training recipe
    data: str = "builtin"
    val_crops: int = 8  # crops per image
    test_crops: int = 8
    reps: int = 30  # timed runs per measurement round
    rounds: int = 7
    train_threads: int = 2
    # Further searches against the same baselines: name -> {"search": overrides of the search recipe, and
    # optionally "relaxations", "targets", "seeds"}. Adding one adds points and changes none.
    tries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed study must share with the one that wrote the results (timing settings may change, and
        tries may be added: each try's settings are kept in its own rows)."""
        d = asdict(self)
        for k in ("reps", "rounds", "train_threads", "tries"):
            d.pop(k)
        return d

    def try_settings(self, name: str) -> dict[str, Any]:
        """A try's relaxations, targets, seeds and search overrides, the study's own where it names none."""
        t = self.tries[name]
        return {"relaxations": t.get("relaxations", self.relaxations), "targets": t.get("targets", self.targets),
                "seeds": t.get("seeds", self.seeds), "search": t.get("search", {})}


def load_config(path: str | Path, **overrides: Any) -> StudyConfig:
    raw = read_yaml(path, f"{path}: cannot read the study config") if path else {}
    try:
        cfg = StudyConfig(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})
    except TypeError as exc:
        raise UserError(f"{path}: {exc}") from None
    return cfg


QUICK = {"targets": [1.5, 3.0], "seeds": [0], "baseline_seeds": [0], "temperature_targets": [3.0], "random_archs": 1,
         "tries": {},
         "budget": 4, "val_crops": 1, "test_crops": 1, "reps": 2, "rounds": 1,
         "search": {"iters": 4, "batch": 2, "patch": 32, "warmup_alpha": 1, "cost_ramp": 1, "checkpoint_every": 2,
                    "score_crops": 1},
         "train": {"batch": 2, "patch": 32, "checkpoint_every": 2, "warmup": 1}}


@dataclass
class Point:
    name: str
    kind: str
    target: float  # multiple of the floor
    seed: int
    relax: str | None = None
    index: int = 0  # random architectures: which one
    try_name: str | None = None  # searched: one of the study's tries (its own search overrides)

    @property
    def label(self) -> str | None:
        """The relaxation as reports group it: a try's searches form their own group ("softmax+absolute")."""
        return f"{self.relax}+{self.try_name}" if self.try_name else self.relax


def plan(cfg: StudyConfig) -> list[Point]:
    """Every point of the study, in the order they run: the floor first, then target by target the first seed
    of every kind before the further seeds, so that a partial study already compares every kind."""
    points = [Point(f"floor-s{s}", "floor", 1.0, s) for s in cfg.baseline_seeds]
    for t in cfg.targets:
        tag = f"t{t:g}x"
        relaxes = list(cfg.relaxations) + (["temperature"] if t in cfg.temperature_targets else [])
        first, rest = [], []
        for i, s in enumerate(cfg.seeds):
            (first if i == 0 else rest).extend(Point(f"{tag}-searched-{r}-s{s}", "searched", t, s, r) for r in relaxes)
        for i, s in enumerate(cfg.baseline_seeds):
            group = first if i == 0 else rest
            group += [Point(f"{tag}-narrowed-s{s}", "narrowed", t, s), Point(f"{tag}-classic-s{s}", "classic", t, s)]
        first += [Point(f"{tag}-random{i}-s{cfg.seeds[0]}", "random", t, cfg.seeds[0], index=i)
                  for i in range(cfg.random_archs)]
        points += first + rest
    for name in cfg.tries:  # after the study itself, so that adding a try leaves the plan's order as it was
        t = cfg.try_settings(name)
        points += [Point(f"t{target:g}x-searched-{r}+{name}-s{s}", "searched", target, s, r, try_name=name)
                   for target in t["targets"] for s in t["seeds"] for r in t["relaxations"]]
    return points


class Study:
    """One results folder and one run folder; `run` trains and scores every missing point."""

    def __init__(self, cfg: StudyConfig, out: str | Path, results: str | Path, commit: bool = False):
        self.cfg, self.out, self.results, self.commit = cfg, Path(out), Path(results), commit
        self.table = _load_table(cfg)
        base = self.train_cfg().unet_config()
        self.supernet = UNet(space_config(base, make_space(cfg.space, base)))
        _check_data(cfg.data)
        self.state = self._load_state()
        self.watch = baselines.Stopwatch(cfg.threads, cfg.reps, cfg.rounds)

    # ---- settings ----------------------------------------------------------------------------
    def train_cfg(self, **changes: Any):  # -> TrainConfig
        from search.train import TrainConfig

        raw = read_yaml(ROOT / self.cfg.train_recipe, f"{self.cfg.train_recipe}: cannot read")
        raw.update(preset=self.cfg.preset, data=self.cfg.data, iters=self.cfg.budget, threads=self.cfg.train_threads)
        raw.update(self.cfg.train)
        raw.update(changes)
        return TrainConfig.from_dict(raw)

    def search_cfg(self, relax: str, seed: int, target_s: float, try_name: str | None = None):  # -> SearchConfig
        from search.nas import SearchConfig
        from search.objective import TARGET_FORMS

        raw = read_yaml(ROOT / self.cfg.search_recipe, f"{self.cfg.search_recipe}: cannot read")
        raw.update(preset=self.cfg.preset, space=self.cfg.space, data=self.cfg.data, threads=self.cfg.train_threads,
                   relax=relax, seed=seed, cost="latency", lut=str(_abs(self.cfg.lut)))
        _override(raw, self.cfg.search)
        if try_name:
            _override(raw, self.cfg.try_settings(try_name)["search"])
        form = (raw.get("cost_loss") or {}).get("form")
        loss = {**(raw.get("cost_loss") or {}), "form": form if form in TARGET_FORMS else "budget",
                "target_latency": target_s, "target_flops": None}
        raw["cost_loss"] = loss
        raw["temperature"] = {"steps": 0, **(raw.get("temperature") or {})}
        return SearchConfig.from_dict(raw)

    def search_equivalent(self, scfg) -> int:
        """Weight iterations a search's steps are worth at the study's batch and crop (pixels per step)."""
        tcfg = self.train_cfg()
        return round(scfg.iters * scfg.batch * scfg.patch ** 2 / (tcfg.batch * tcfg.patch ** 2))

    # ---- state -------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.results / "pareto.json"

    def _load_state(self) -> dict[str, Any]:
        if self.state_path.is_file():
            state = read_json(self.state_path)
            stored, now = dict(state.get("config") or {}), self.cfg.fingerprint()
            had, want = stored.pop("targets", []), now.pop("targets")
            if stored != now or not set(had) <= set(want):
                raise UserError(f"{self.state_path} was written by a study with other settings; use another "
                                "--results folder or the same config (targets may only be added)")
            return self._add_targets(state)
        return {"host": "", "config": self.cfg.fingerprint(), "split": _split(self.cfg.data), "floor": None,
                "targets": {}, "points": []}

    def _add_targets(self, state: dict[str, Any]) -> dict[str, Any]:
        """A resumed study may name more targets than the one that wrote the results: each new one is a multiple
        of the stored floor time like the others, and every finished point keeps its meaning."""
        state["config"] = self.cfg.fingerprint()
        if state.get("floor"):
            floor_ms = state["floor"]["measured_ms"]
            for t in self.cfg.targets:
                state["targets"].setdefault(f"{t:g}", t * floor_ms)
        return state

    def _save(self, message: str) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        write_json(self.state_path, self.state)
        if self.commit:
            _git_commit(self.results, message)

    def done(self) -> set[str]:
        return {p["name"] for p in self.state["points"]}

    # ---- the study -----------------------------------------------------------------------------
    def run(self, progress: bool = True) -> dict[str, Any]:
        from export.runtime import host_id

        with self.locked():
            self._floor()
        self.state["host"] = host_id().split("|", 1)[-1]
        bar = tqdm(total=len([p for p in plan(self.cfg) if p.name not in self.done()]), disable=not progress,
                   desc="pareto", unit="point")
        while (point := self._claim()) is not None:
            bar.set_postfix_str(point.name)
            try:
                bar.write(self._run_one(point))
            finally:
                self._claim_path(point).unlink(missing_ok=True)
            bar.update()
        return self.state

    def _run_one(self, point: Point) -> str:
        """Train, score and time one point, then save (and commit) its row; return the line that reports it."""
        t0 = time.perf_counter()
        row = self.run_point(point)
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        line = (f"{point.name}: test PSNR(Y) {row['psnr_test']:.3f} dB, {row['measured_ms']:.2f} ms/step "
                f"({row['ratio_to_floor']:.2f}x the floor) on {self.state['host']}, {row['wall_seconds']:.0f} s")
        with self.locked():
            self._keep_best(row)
            self.state["points"].append(row)
            self._save(f"Pareto study: {line}")
        return line

    def _claim(self) -> Point | None:
        """The next point of the plan that is neither finished nor being run by another live worker, claimed for
        this process. Workers claim points as they go, so that they share the work left however it is spread over
        the plan (a fixed split left one of two workers idle for the last six points of a resumed study)."""
        with self.locked():
            done = self.done()
            return claim_first(plan(self.cfg), self._claim_path, lambda p: p.name in done)

    def _claim_path(self, point: Point) -> Path:
        return self.out / "claims" / f"{point.name}.pid"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the study's lock and see what other worker processes have saved meanwhile: points, sizings and the
        floor come from the results folder, so that no worker overwrites another's rows or commits."""
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / ".pareto.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.state_path.is_file():
                    disk = read_json(self.state_path)
                    sizes = {**self.state.get("sizes", {}), **disk.get("sizes", {})}
                    self.state.update({k: disk[k] for k in ("points", "floor", "targets", "placed", "budget_checks")
                                       if k in disk},
                                      sizes=sizes)
                    self.state["host"] = self.state.get("host") or disk.get("host", "")  # as the workers named it
                    self._add_targets(self.state)  # the results may predate targets this study adds
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _floor(self) -> None:
        arch = baselines.floor_arch(self.table, self.supernet)
        net = UNet(dataclasses.replace(self.supernet.cfg, arch=arch))
        stored = self.state.get("floor")
        quiet = self.watch.set_floor(net, stored["measured_ms"] if stored else None)
        if stored is None:
            from export.runtime import host_id

            self.state["floor"] = {"arch": arch, "arch_id": baselines.arch_id(arch), "measured_ms": quiet,
                                   "predicted_ms": self.table.predict(arch, 1) * 1e3, "host": host_id()}
            self.state["targets"] = {f"{t:g}": t * quiet for t in [1.0, *self.cfg.targets]}
            self._save(f"Pareto study: floor timed at {quiet:.2f} ms/step")

    def retime_floor(self) -> float:
        """Time the floor alone again (in a quiet process) and rescale every figure of the study by the change:
        the points' measurements are ratios to the floor, so they keep their meaning."""
        new = self._time_floor()
        scale = self._rescale(new)
        for p in self.state["points"]:
            p["measured_ms"] *= scale
        self._save(f"Pareto study: floor re-timed at {new:.2f} ms/step (figures x{scale:.3f})")
        return new

    def retime(self) -> int:
        """Time the floor and every finished point again, in this process. The study times each point while the
        other workers train, and the ratio to the floor still moves with their load (the same FSRCNN measured
        1.49-1.81x); on a quiet machine this gives the figures the verdicts match on. The networks are rebuilt
        from their rows (latency does not depend on the weights' values), so the results folder is enough."""
        self._rescale(self._time_floor())
        floor = self.state["floor"]
        for row in tqdm(self.state["points"], desc="retime", unit="point"):
            row.update(_timing_fields(self.watch.measure(*self.network(row))), retimed=True)
        for row in self.state.get("placed", []):  # placed models are timed from their folders, where present
            if (_abs(row["model"]) / "config.json").is_file():
                row.update(self._timing(_abs(row["model"])), retimed=True)
        self._save(f"Pareto study: {len(self.state['points'])} points re-timed in a quiet process, floor "
                   f"{floor['measured_ms']:.2f} ms/step")
        return len(self.state["points"])

    def network(self, row: dict[str, Any]) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        """A finished point's network, untrained, rebuilt from its row and the study's sizings, with its inputs."""
        if row["kind"] == "classic":
            return FSRCNN(FSRCNNConfig(**row["fsrcnn"])), baselines.classic_inputs()
        if row["kind"] == "narrowed":
            width = self.state["sizes"][f"narrowed@{row['target']:g}"]["base_channels"]
            cfg = dataclasses.replace(self.train_cfg().unet_config(), base_channels=width, arch={})
        else:
            cfg = dataclasses.replace(self.supernet.cfg, arch=row["arch"])
        net = UNet(cfg)
        return net, baselines.unet_inputs(net)

    def _floor_net(self) -> UNet:
        if not self.state.get("floor"):
            raise UserError(f"{self.state_path}: no floor timed yet; run the study first")
        return UNet(dataclasses.replace(self.supernet.cfg, arch=self.state["floor"]["arch"]))

    def _time_floor(self) -> float:
        """The stored floor architecture timed alone again (the stopwatch's new reference)."""
        return self.watch.set_floor(self._floor_net())

    def place(self, name: str, model: str | Path) -> dict[str, Any]:
        """Put a model that is not one of the study's points (the shipped default, trained past the study's
        budget) on the study's axes: scored on the same val and test crops, timed against the floor the same
        way. Kept under "placed" in pareto.json, replacing an earlier placement of the same name."""
        if not PLACE_NAME.fullmatch(name):
            raise UserError(f"--place: name {name!r} must be letters, digits, '.', '_' or '-'")
        folder = _abs(model)
        if not (folder / "config.json").is_file():
            raise UserError(f"--place {name}={model}: not a model folder (no config.json)")
        floor = self._floor_net()
        with self.locked():  # the stored floor time, as the study's points were measured against it
            self.watch.set_floor(floor, self.state["floor"]["measured_ms"])
        val = score(folder, self.cfg.data, "val", self.cfg.val_crops)
        test = score(folder, self.cfg.data, "test", self.cfg.test_crops)
        row = {"name": name, "model": str(model), **self._timing(folder), "psnr_val": val["psnr_y"],
               "psnr_test": test["psnr_y"], "ssim_test": test["ssim_y"], "val_crops": val["crops"],
               "test_crops": test["crops"]}
        if not is_classic(folder):
            row["arch_id"] = baselines.arch_id(load_model(folder).net.cfg.arch)
        with self.locked():
            self.state["placed"] = [r for r in self.state.get("placed", []) if r["name"] != name] + [row]
            self._save(f"Pareto study: {name} ({model}) placed at {row['measured_ms']:.2f} ms/step, "
                       f"test PSNR(Y) {row['psnr_test']:.3f} dB")
        return row

    def _timing(self, folder: Path) -> dict[str, float]:
        return _timing_fields(self.measure(folder))

    def _rescale(self, floor_ms: float) -> float:
        """Store a new time of the floor; targets (multiples of it) and sizings follow. Returns new / old."""
        floor = self.state["floor"]
        scale = floor_ms / floor["measured_ms"]
        floor["measured_ms"] = floor_ms
        self.state["targets"] = {k: v * scale for k, v in self.state["targets"].items()}
        for p in self.state["points"]:
            p["target_ms"] *= scale
        for size in self.state.get("sizes", {}).values():
            size["sizing_ms"] *= scale
        return scale

    def _model_dirs(self) -> dict[str, Path]:
        """Every finished point's model folder in the run folder, or a clear error naming those missing."""
        dirs = {p["name"]: self.out / p["name"] / "train" / "model" for p in self.state["points"]}
        missing = sorted(n for n, d in dirs.items() if not (d / "config.json").is_file())
        if missing:
            raise UserError(f"{self.out}: no model folder for {', '.join(missing)}; --rescore needs the study's "
                            "run folder (--out) with every finished point")
        return dirs

    def rescore(self) -> int:
        """Score every finished point again on both splits (after a change to the scoring crops), from its run
        folder, and keep the best seed of each group by the new val figures. Returns the number rescored."""
        dirs = self._model_dirs()
        rows, self.state["points"] = self.state["points"], []
        for row in tqdm(rows, desc="rescore", unit="point"):
            val = score(dirs[row["name"]], self.cfg.data, "val", self.cfg.val_crops)
            test = score(dirs[row["name"]], self.cfg.data, "test", self.cfg.test_crops)
            row.update(psnr_val=val["psnr_y"], val_crops=val["crops"], psnr_test=test["psnr_y"],
                       ssim_test=test["ssim_y"], test_crops=test["crops"], bicubic_psnr_test=test["bicubic_psnr_y"],
                       model=None, _model_dir=str(dirs[row["name"]]))
            self._keep_best(row)
            self.state["points"].append(row)
        self._save(f"Pareto study: {len(rows)} points rescored on the current val and test crops")
        return len(rows)

    def target_ms(self, t: float) -> float:
        return self.state["targets"][f"{t:g}"]

    def table_seconds(self, t: float) -> float:
        """A measured target in the table's units (the table may run fast or slow against measurement)."""
        f = self.state["floor"]
        return self.target_ms(t) * f["predicted_ms"] / f["measured_ms"] / 1e3

    def run_point(self, p: Point) -> dict[str, Any]:
        run = self.out / p.name
        if p.kind == "searched":
            model, extra = self._searched(p, run)
        elif p.kind == "classic":
            model, extra = self._classic(p, run)
        else:
            arch = self._arch(p)
            model = self.train_arch(run, p.seed, arch if p.kind != "narrowed" else {}, **(
                {"unet_overrides": {"base_channels": self._narrowed(p).base_channels}} if p.kind == "narrowed" else {}))
            extra = {"iters": self.cfg.budget, "arch": arch or None}
        return self._row(p, model, extra)

    # ---- kinds ---------------------------------------------------------------------------------
    def _arch(self, p: Point) -> dict[str, str]:
        if p.kind == "floor":
            return self.state["floor"]["arch"]
        if p.kind == "random":
            archs = baselines.random_archs(self.table, self.supernet, self.table_seconds(p.target),
                                           self.cfg.random_archs, self.cfg.random_band, seed=int(p.target * 1000))
            return archs[p.index]
        return {}

    def _narrowed(self, p: Point):
        key = f"narrowed@{p.target:g}"
        with self.locked():
            sizes = self.state.setdefault("sizes", {})
            if key not in sizes:
                cfg, ms = baselines.narrowed_config(self.train_cfg().unet_config(), self.target_ms(p.target), self.watch)
                sizes[key] = {"base_channels": cfg.base_channels, "sizing_ms": ms}
                self._save(f"Pareto study: base narrowed to {cfg.base_channels} channels for {p.target:g}x the floor")
        return dataclasses.replace(self.train_cfg().unet_config(), base_channels=sizes[key]["base_channels"])

    def train_arch(self, run: Path, seed: int, arch: dict[str, str], **changes: Any) -> Path:
        from search.train import Trainer

        overrides = {**changes.pop("unet_overrides", {}), **({"arch": arch} if arch else {})}
        trainer = Trainer(self.train_cfg(seed=seed, unet_overrides=overrides, **changes), run / "train")
        trainer.resume()
        return trainer.run(progress=False)

    def _searched(self, p: Point, run: Path) -> tuple[Path, dict[str, Any]]:
        from search.nas import SearchTrainer

        scfg = self.search_cfg(p.relax or "softmax", p.seed, self.table_seconds(p.target), p.try_name)
        searcher = SearchTrainer(scfg, run / "search")
        searcher.resume()
        subnet = searcher.run(progress=False)
        record = read_json(subnet / "arch.json")
        spent = self.search_equivalent(scfg)
        model = self.train_arch(run, p.seed, {}, init_model=str(subnet), iters=self.cfg.budget - spent)
        disc = record.get("discretization") or {}
        choices = record["choices"]
        ents, margins = record["entropy"].values(), record["margin"].values()
        return model, {"iters": self.cfg.budget, "search_iters": scfg.iters, "search_equivalent_iters": spent,
                       "arch": choices, "gap_db": disc.get("gap_db"), "supernet_psnr_val": disc.get("supernet_psnr_y"),
                       "inherited_psnr_val": disc.get("inherited_psnr_y"), "skip_share": record["skip_share"],
                       "mean_entropy": float(np.mean(list(ents))), "min_margin": float(min(margins)),
                       "predicted_ms": self.table.predict(choices, 1) * 1e3,
                       "target_table_ms": self.table_seconds(p.target) * 1e3,
                       **({"try": {"name": p.try_name, "search": self.cfg.try_settings(p.try_name)["search"]}}
                          if p.try_name else {})}

    def _classic(self, p: Point, run: Path) -> tuple[Path, dict[str, Any]]:
        key = f"classic@{p.target:g}"
        with self.locked():
            sizes = self.state.setdefault("sizes", {})
            if key not in sizes:
                fcfg, ms = baselines.classic_config(self.target_ms(p.target), self.watch)
                sizes[key] = {"fsrcnn": asdict(fcfg), "sizing_ms": ms}
                self._save(f"Pareto study: FSRCNN sized for {p.target:g}x the floor")
        return self.train_classic(run, p.seed, sizes[key]["fsrcnn"]), {"iters": self.cfg.budget,
                                                                       "fsrcnn": sizes[key]["fsrcnn"]}

    def train_classic(self, run: Path, seed: int, fsrcnn: dict[str, Any], **changes: Any) -> Path:
        """FSRCNN trained by direct regression on the study's recipe (its diffusion settings aside)."""
        from search.classic_train import ClassicConfig, ClassicTrainer

        raw = self.train_cfg(seed=seed, **changes).to_dict()
        raw.pop("diffusion")
        trainer = ClassicTrainer(ClassicConfig.from_dict({**raw, "fsrcnn": fsrcnn}), run / "train")
        trainer.resume()
        return trainer.run(progress=False)

    # ---- scoring -------------------------------------------------------------------------------
    def _row(self, p: Point, model: Path, extra: dict[str, Any]) -> dict[str, Any]:
        val = score(model, self.cfg.data, "val", self.cfg.val_crops)
        test = score(model, self.cfg.data, "test", self.cfg.test_crops)
        timing = self._timing(model)
        arch = extra.pop("arch", None)
        row = {"name": p.name, "kind": p.kind, "relax": p.label, "arch_id": baselines.arch_id(arch) if arch else None,
               "target": p.target, "target_ms": self.target_ms(p.target), **timing,
               "seed": p.seed, "train_iters": extra.pop("iters"), "train_seconds": _train_seconds(model),
               "psnr_val": val["psnr_y"], "psnr_test": test["psnr_y"], "ssim_test": test["ssim_y"],
               "gap_db": extra.pop("gap_db", None), "model": None, "val_crops": val["crops"],
               "test_crops": test["crops"], "bicubic_psnr_test": test["bicubic_psnr_y"],
               **extra}
        if arch:
            row["arch"] = arch
            row["slots_differing_from_floor"] = baselines.slots_differing(arch, self.state["floor"]["arch"],
                                                                          self.supernet)
        row["_model_dir"] = str(model)
        return row

    def measure(self, model: Path) -> dict[str, float]:
        if is_classic(model):
            return self.watch.measure(load_classic(model), baselines.classic_inputs())
        net = load_model(model).net
        return self.watch.measure(net, baselines.unet_inputs(net))

    def _keep_best(self, row: dict[str, Any]) -> None:
        """Keep the model folder of the best seed (on val) of every (kind, relaxation, target) group."""
        src = Path(row.pop("_model_dir"))
        group = f"{row['kind']}" + (f"-{row['relax']}" if row["relax"] else "") + f"-{row['target']:g}x"
        same = [r for r in self.state["points"] if r["kind"] == row["kind"] and r["relax"] == row["relax"]
                and r["target"] == row["target"]]
        if any(r["psnr_val"] >= row["psnr_val"] for r in same):
            return
        dest = self.results / "models" / group
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.onnx"))
        for r in same:
            r["model"] = None
        row["model"] = str(dest.relative_to(self.results))


def score(model: Path, data: str, split: str, per_image: int) -> dict[str, Any]:
    """PSNR/SSIM(Y) on fixed crops of one split: the diffusion models with DDIM at 1 step (the served setting),
    the classic network with its one forward pass."""
    from search.evaluate import EvalConfig, evaluate, scores

    if is_classic(model):
        crops = eval_crops(load_pairs(data, split), per_image=per_image)
        net = load_classic(model)
        lr, bic = (torch.from_numpy(np.stack([c[i] for c in crops])) for i in (1, 2))
        hrs = [to_uint8(c[3]) for c in crops]
        with torch.inference_mode():
            sr = net(lr, bic).numpy()
        out = scores(sr, hrs)
        return {"psnr_y": out["psnr_y"], "ssim_y": out["ssim_y"], "crops": len(crops),
                "bicubic_psnr_y": scores(bic.numpy(), hrs)["psnr_y"]}
    report = evaluate(load_model(model), EvalConfig(data=data, split=split, steps=[1], samplers=["ddim"],
                                                    crops_per_image=per_image), progress=False)
    r = report["results"][0]
    return {"psnr_y": r["psnr_y"], "ssim_y": r["ssim_y"], "crops": report["crops"],
            "bicubic_psnr_y": report["bicubic"]["psnr_y"]}


# ---- checks --------------------------------------------------------------------------------
def validate(cfg: StudyConfig) -> None:
    """Everything a study can be refused for, before anything is written."""
    bad = [r for r in cfg.relaxations if r not in RELAXATIONS]
    if bad or not cfg.relaxations:
        raise UserError(f"unknown relaxation {', '.join(bad) or '(none given)'}; choose from {', '.join(RELAXATIONS)}")
    if not cfg.targets or min(cfg.targets) <= 1.0:
        raise UserError(f"latency targets are multiples of the table's fastest architecture and must be above 1 "
                        f"(got {cfg.targets}): nothing can run faster than the floor")
    if not cfg.seeds or not cfg.baseline_seeds or cfg.budget < 1:
        raise UserError("seeds and baseline_seeds must not be empty, and budget must be >= 1")
    _check_tries(cfg)
    _load_table(cfg)
    _check_data(cfg.data)


def _check_tries(cfg: StudyConfig) -> None:
    """Each try: a plain name (it becomes part of run folders and point names), known relaxations, targets above
    the floor, and search overrides that the search's config accepts."""
    from search.nas import SearchConfig

    allowed = {f.name for f in dataclasses.fields(SearchConfig)}
    for name, spec in cfg.tries.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", str(name)) or not isinstance(spec, dict):
            raise UserError(f"try {name!r}: a name of lower-case letters, digits and dashes, with a mapping of "
                            "settings")
        unknown = set(spec) - {"relaxations", "targets", "seeds", "search"}
        t = cfg.try_settings(name)
        bad = [r for r in t["relaxations"] if r not in RELAXATIONS]
        fields = set(t["search"]) - allowed
        problems = [unknown and f"unknown settings {', '.join(sorted(unknown))}",
                    bad and f"unknown relaxation {', '.join(bad)}",
                    fields and f"the search has no setting {', '.join(sorted(fields))}",
                    min(t["targets"], default=0) <= 1.0 and "targets must be above 1",
                    not t["seeds"] and "seeds must not be empty"]
        if any(problems):
            raise UserError(f"try {name!r}: " + "; ".join(filter(None, problems)))


def _override(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Apply a study's or a try's search overrides: one field of a nested setting (cost_loss: {form: absolute})
    changes that field and keeps the recipe's others."""
    for k, v in overrides.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v


def claim_first(items: Iterable[T], path_of: Callable[[T], Path], done: Callable[[T], bool]) -> T | None:
    """The first item neither done nor claimed by another live process, claimed for this one by a file holding its
    pid (call it under the study's lock)."""
    for item in items:
        path = path_of(item)
        if done(item) or claimed_by_another(path):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(os.getpid()))
        return item
    return None


def claimed_by_another(path: Path) -> bool:
    """Whether a claim file names another process that is still alive (a claim outlives a killed worker)."""
    try:
        pid = int(path.read_text())
    except (FileNotFoundError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # PermissionError would mean alive, under another user: let it count as a live claim
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _timing_fields(timing: dict[str, float]) -> dict[str, float]:
    """A stopwatch measurement as the row fields every point and placed model carries."""
    return {"measured_ms": timing["ms"], "ratio_to_floor": timing["ratio_to_floor"], "raw_ms": timing["raw_ms"]}


def _abs(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else ROOT / p


def _load_table(cfg: StudyConfig) -> LatencyTable:
    path = _abs(cfg.lut)
    if not path.is_file():
        raise UserError(f"{cfg.lut}: no such latency table (make one with `srnas profile --threads "
                        f"{cfg.threads} --out {cfg.lut}`)")
    try:
        table = LatencyTable.load(path)
    except Exception as exc:  # a corrupt table is the user's file, not a crash
        raise UserError(f"{cfg.lut}: not a latency table ({str(exc)[:200]})") from None
    if int(table.meta.get("threads", 0)) != cfg.threads:
        raise UserError(f"{cfg.lut} was timed with {table.meta.get('threads')} runtime threads, but serving workers "
                        f"run {cfg.threads}: profile the serving configuration")
    if 1 not in table.fixed:
        raise UserError(f"{cfg.lut} has no batch-1 entries")
    return table


def _check_data(data: str) -> None:
    for split in ("train", "val", "test"):
        try:
            if not load_pairs(data, split):
                raise DataError(f"{data}: the {split} split is empty")
        except DataError as exc:
            raise UserError(f"data: {exc}") from None


def _split(data: str) -> dict[str, list[str]]:
    return {s: [p.name for p in load_pairs(data, s)] for s in ("train", "alpha", "val", "test")
            if s != "alpha" or data == "builtin" or (Path(data) / "alpha").is_dir()}


def _train_seconds(model: Path) -> float:
    """Wall-clock of the training runs behind a model folder (search and fine-tune), from their logs."""
    total = 0.0
    for log in ("search_log.csv", "train_log.csv"):
        for path in model.parent.parent.glob(f"*/{log}"):
            lines = path.read_text().strip().splitlines()
            if len(lines) > 1:
                header = lines[0].split(",")
                total += float(lines[-1].split(",")[header.index("seconds")])
    return round(total, 1)


def _git_commit(folder: Path, message: str) -> None:
    """Commit the results folder (a machine may be reset; the study resumes from what is committed)."""
    for _ in range(5):
        add = subprocess.run(["git", "add", "--", str(folder)], cwd=ROOT, capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", str(folder)], cwd=ROOT, capture_output=True,
            text=True).returncode == 0
        if done:
            return
        time.sleep(2)  # another git command holds the index
    print(f"warning: could not commit {folder}", flush=True)
