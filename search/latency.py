"""Latency lookup table: whole candidate blocks timed on the serving backend, plus the fixed rest.

Backends fuse ops (a conv with its activation, GroupNorm's pieces), so each candidate is timed as
the whole unit the network will run, on the backend and thread settings it will be served with.
The fixed rest of the network is the median, over a few random subnets, of measured end-to-end time
minus the sum of their candidates. `check` times other random subnets end to end and reports the
table's error (MAPE), before and after a fitted linear correction.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from export.runtime import host_id  # noqa: F401  (the tables name their host)
from models.checkpoint import read_json, write_json
from models.unet import UNet
from search.costs import SlotCosts
from models.blocks import DEFAULT_OP, WidthSlot
from search.supernet import (at_widths, context_key, context_like, derive_arch, extract, mixed_ops, parse_context,
                             random_arch, search_slots, slot_inputs, width_combos, width_slots)

BACKENDS = ("torch", "onnxruntime")
Timer = Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], float]


@dataclass
class ProfileConfig:
    backend: str = "onnxruntime"
    batches: list[int] = field(default_factory=lambda: [1])
    threads: int = 0  # 0: the CPU quota, as serving uses
    warmup: int = 3
    reps: int = 15
    size: int = 128
    fixed_subnets: int = 3  # per width context
    seed: int = 0
    device: str = "cpu"  # onnxruntime: cpu | cuda (its TensorRT then CUDA execution providers, as served on GPUs)


def backend_version(backend: str) -> str:
    if backend == "torch":
        return torch.__version__
    import onnxruntime as ort

    return ort.__version__


def median_seconds(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_timer(cfg: ProfileConfig) -> Timer:
    from export.runtime import RuntimeConfig, cpu_quota

    threads = cfg.threads or cpu_quota()
    if cfg.backend == "torch":
        def time_torch(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> float:
            torch.set_num_threads(threads)
            module.eval()
            with torch.inference_mode():
                return median_seconds(lambda: module(*args), cfg.warmup, cfg.reps)
        return time_torch
    if cfg.backend == "onnxruntime":
        from export.onnx_export import to_onnx
        from export.runtime import ort_session

        last: dict[str, Any] = {}  # the batch axis is dynamic: one session serves every batch of a module

        def time_ort(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> float:
            names = [f"input{i}" for i in range(len(args))]
            if last.get("module") is not module:
                last.update(module=module, sess=ort_session(to_onnx(module, args, names), RuntimeConfig(
                    intra_threads=threads, device=cfg.device)))
            sess = last["sess"]
            feed = {n: a.numpy() for n, a in zip(names, args)}
            return median_seconds(lambda: sess.run(None, feed), cfg.warmup, cfg.reps)
        return time_ort
    raise ValueError(f"unknown backend {cfg.backend!r}; choose from {', '.join(BACKENDS)}")


def fastest_of(timer: Timer, rounds: int) -> Timer:
    """The fastest of `rounds` timings: a noisy VM's neighbours only ever slow a run down."""
    return lambda module, args: min(timer(module, args) for _ in range(rounds))


def time_network(net: UNet, batch: int, timer: Timer, size: int = 128) -> float:
    args = (torch.randn(batch, net.cfg.in_channels, size, size), torch.full((batch,), 0.5))
    return timer(net, args)


class LatencyTable:
    """Entries keyed by slot, candidate, input and output shape, batch, dtype, backend and version, and host.

    `contexts` maps each width context ("" when widths are fixed) to every slot's input and output shape
    there; `fixed[batch][context]` is the rest of the network.
    """

    def __init__(self, meta: dict[str, Any], entries: list[dict[str, Any]], contexts: dict[str, dict[str, Any]],
                 fixed: dict[int, dict[str, float]], correction: dict[int, tuple[float, float]] | None = None):
        self.meta, self.entries, self.contexts, self.fixed = meta, entries, contexts, fixed
        self.correction = correction or {}
        self.entries_from: str | None = None  # set when loaded from a view of another table file
        self._index = {_key(e["slot"], e["candidate"], e["shape"][1:], e["out_shape"][1:], e["batch"]): e["median_s"]
                       for e in entries}

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self._index[_key(entry["slot"], entry["candidate"], entry["shape"][1:], entry["out_shape"][1:],
                         entry["batch"])] = entry["median_s"]

    def seconds(self, slot: str, candidate: str, batch: int, ctx: str = "") -> float:
        shapes = self.contexts[ctx][slot]
        key = _key(slot, candidate, shapes["shape"], shapes["out_shape"], batch)
        if key not in self._index:
            raise KeyError(f"no latency entry for {slot}/{candidate} at batch {batch} ({ctx or 'fixed widths'})")
        return self._index[key]

    def slot_costs(self, net: UNet, batch: int = 1) -> SlotCosts:
        """Per-slot costs for the search, with the table's linear correction folded in (a * (rest + sum) + b =
        (a * rest + b) + sum of a * cost), so that a budget acts on the same figure `predict` reports."""
        if batch not in self.fixed:
            raise ValueError(f"the table has no batch {batch}; it has {sorted(self.fixed)}")
        a, b = self.correction.get(batch, (1.0, 0.0))
        per_slot = {m.slot: {ctx: {n: a * self.seconds(m.slot, n, batch, ctx) for n in m.names}
                             for ctx in self.contexts} for m in mixed_ops(net).values()}
        return SlotCosts({ctx: a * rest + b for ctx, rest in self.fixed[batch].items()}, per_slot)

    def predict(self, arch: dict[str, str], batch: int = 1, corrected: bool = True) -> float:
        ctx = context_like(arch, next(iter(self.contexts)))
        raw = self.fixed[batch][ctx] + sum(self.seconds(s, arch[s], batch, ctx) for s in self.contexts[ctx])
        if corrected and batch in self.correction:
            a, b = self.correction[batch]
            return a * raw + b
        return raw

    def parts(self, arch: dict[str, str], batch: int = 1) -> dict[str, float]:
        """The uncorrected prediction split by candidate (summed over slots) plus the fixed rest: what a
        calibration scales part by part."""
        from export.calibration import REST

        ctx = context_like(arch, next(iter(self.contexts)))
        out = {REST: self.fixed[batch][ctx]}
        for slot in self.contexts[ctx]:
            out[arch[slot]] = out.get(arch[slot], 0.0) + self.seconds(slot, arch[slot], batch, ctx)
        return out

    def calibrated(self, cal, meta: dict[str, Any]) -> "LatencyTable":  # cal: export.calibration.Calibration
        """This table mapped onto another host: every entry and rest scaled by the calibration; no correction
        (a correction was fitted against the source host's measurements)."""
        from export.calibration import REST

        missing = sorted(set(self.fixed) - set(cal.scales))
        if missing:
            raise ValueError(f"the calibration has no batch {missing}")
        entries = [{**e, "median_s": e["median_s"] * cal.scale(e["batch"], e["candidate"]), "host": meta["host"]}
                   for e in self.entries]
        fixed = {b: {ctx: s * cal.scale(b, REST) for ctx, s in per.items()} for b, per in self.fixed.items()}
        return LatencyTable({**self.meta, **meta}, entries, self.contexts, fixed)

    def fastest(self, batch: int = 1) -> dict[str, str]:
        """The arch the table predicts fastest: the best width context with its fastest candidates."""
        best: tuple[float, dict[str, str]] | None = None
        for ctx, slots in self.contexts.items():
            arch = parse_context(ctx)
            for slot in slots:
                names = {e["candidate"] for e in self.entries if e["slot"] == slot}
                arch[slot] = min(names, key=lambda n: self.seconds(slot, n, batch, ctx))
            t = self.predict(arch, batch, corrected=False)
            best = (t, arch) if best is None or t < best[0] else best
        assert best is not None
        return best[1]

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "entries": self.entries, "contexts": self.contexts,
                "fixed": {str(k): v for k, v in self.fixed.items()},
                "correction": {str(k): list(v) for k, v in self.correction.items()}}

    def save(self, path: str | Path) -> None:
        """The whole table, or for a view only its meta and correction (its timings stay in the table it names)."""
        d = self.to_dict()
        if self.entries_from:
            d = {"meta": self.meta, "entries_from": self.entries_from, "correction": d["correction"]}
        write_json(Path(path), d)

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        """A table file, or a view of one: a file with `entries_from` (a table in the same folder) holds only its
        own correction (and optionally its meta) and reads the timings from there, so that a study can keep the raw
        table and a checked twin (`srnas profile --check-only --out VIEW`) without a second copy of every entry."""
        path = Path(path)
        d = read_json(path)
        correction = {int(k): (float(v[0]), float(v[1])) for k, v in d.get("correction", {}).items()}
        view = d.get("entries_from")
        if view is not None:
            base = read_json(_sibling(path, view))
            if "entries_from" in base:
                raise ValueError(f"{path}: {view} is itself a view; name the table that holds the entries")
            d = {**base, "meta": d.get("meta", base["meta"])}
        table = cls(d["meta"], d["entries"], d["contexts"], {int(k): v for k, v in d["fixed"].items()}, correction)
        table.entries_from = view
        return table


def _sibling(path: Path, name: Any) -> Path:
    """A table named by another table: a plain file name in the same folder, never a path that leaves it."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"{path}: entries_from must be a file name in the same folder (got {name!r})")
    return path.parent / name


def _key(slot: str, candidate: str, shape: list[int], out_shape: list[int], batch: int) -> tuple:
    return slot, candidate, tuple(shape), tuple(out_shape), batch


def _slot_shapes(supernet: UNet, size: int) -> tuple[dict[str, dict[str, Any]], dict[tuple, tuple]]:
    """Per width context, each slot's input/output shapes; and one module + input per distinct block."""
    names = [w.slot for w in width_slots(supernet)]
    contexts: dict[str, dict[str, Any]] = {}
    blocks: dict[tuple, tuple] = {}
    for combo in width_combos(supernet):
        narrow = at_widths(supernet, combo).eval()
        ctx, inputs = context_key(combo, names), slot_inputs(narrow, size, 1)
        contexts[ctx] = {}
        for m in mixed_ops(narrow).values():
            with torch.no_grad():
                out = m.candidates[m.names[0]](*inputs[m.slot])
            shapes = {"shape": list(inputs[m.slot][0].shape[1:]), "out_shape": list(out.shape[1:])}
            contexts[ctx][m.slot] = shapes
            for name in m.names:
                blocks.setdefault((m.slot, name, tuple(shapes["shape"]), tuple(shapes["out_shape"])),
                                  (m.candidates[name], inputs[m.slot]))
    return contexts, blocks


def profile(supernet: UNet, cfg: ProfileConfig, progress: bool = True, table: LatencyTable | None = None,
            labels: dict[str, str] | None = None) -> LatencyTable:
    """Time every distinct candidate block (per slot and width context) as a whole, then the fixed rest.

    With `table`, only the batches it lacks are profiled and added to it (extending a shipped table).
    """
    timer = make_timer(cfg)
    meta = {"backend": cfg.backend, "version": backend_version(cfg.backend), "host": host_id(),
            "dtype": "float32", "threads": cfg.threads or _threads(), "config": asdict(cfg),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(labels or {})}
    contexts, blocks = _slot_shapes(supernet, cfg.size)
    if table is None:
        table = LatencyTable(meta, [], contexts, {})
    elif (table.meta["backend"], table.meta["host"]) != (meta["backend"], meta["host"]):
        raise ValueError(f"the table was measured with {table.meta['backend']} on {table.meta['host']}, "
                         f"not {meta['backend']} on {meta['host']}")
    batches = [b for b in cfg.batches if b not in table.fixed]
    if table.entries:
        table.meta.setdefault("extended", []).append({"batches": batches, "created": meta["created"]})
    bar = tqdm(total=len(batches) * len(blocks), disable=not progress, desc=f"profile {cfg.backend}", unit="block")
    for (slot, name, shape, out_shape), (module, args) in blocks.items():
        for batch in batches:  # batch innermost: one export per block
            b_args = tuple(a.repeat(batch, *[1] * (a.dim() - 1)) for a in args)
            table.add({"slot": slot, "candidate": name, "shape": [batch, *shape], "out_shape": [batch, *out_shape],
                       "batch": batch, "dtype": "float32", "backend": cfg.backend, "version": meta["version"],
                       "host": meta["host"], "median_s": timer(module, b_args)})
            bar.update(1)
    bar.close()
    table.fixed.update({b: {} for b in batches})
    rng = torch.Generator().manual_seed(cfg.seed)
    for batch in batches:  # fixed rest = measured - sum of candidates, median over random subnets
        for ctx in tqdm(contexts, disable=not progress, desc=f"fixed rest, batch {batch}", unit="context"):
            rests = []
            for _ in range(cfg.fixed_subnets):
                arch = {**random_arch(supernet, rng), **parse_context(ctx)}
                table.fixed[batch][ctx] = 0.0
                rests.append(time_network(extract(supernet, arch), batch, timer, cfg.size)
                             - table.predict(arch, batch, corrected=False))
            table.fixed[batch][ctx] = statistics.median(rests)
    return table


def _threads() -> int:
    from export.runtime import cpu_quota

    return cpu_quota()


def base_arch(supernet: UNet) -> dict[str, str] | None:
    """The preset's own network as an arch of this space (None when the space leaves it out)."""
    arch = derive_arch(supernet)
    for m in search_slots(supernet):
        own = "1" if isinstance(m, WidthSlot) else "self" if m.slot.endswith(".attn") else DEFAULT_OP
        if own not in m.names:
            return None
        arch[m.slot] = own
    return arch


def check(table: LatencyTable, supernet: UNet, cfg: ProfileConfig, n: int = 20, progress: bool = True) -> dict[str, Any]:
    """Time `n` random subnets plus the base and the predicted-fastest end to end; MAPE of the table raw
    and with a leave-one-out linear fit."""
    timer = make_timer(cfg)
    report: dict[str, Any] = {"backend": cfg.backend, "subnets": n, "batches": {}}
    for batch, archs in check_archs(table, supernet, cfg.batches, n, cfg.seed).items():
        pred, meas = [], []
        for _, arch in tqdm(archs, disable=not progress, desc=f"check batch {batch}"):
            pred.append(table.predict(arch, batch, corrected=False))
            meas.append(time_network(extract(supernet, arch), batch, timer, cfg.size))
        p, m = np.array(pred), np.array(meas)
        k = len(archs)
        loo = np.array([np.polyval(np.polyfit(np.delete(p, i), np.delete(m, i), 1), p[i]) for i in range(k)])
        a, b = np.polyfit(p, m, 1)
        raw_mape, fit_mape = _mape(p, m), _mape(loo, m)
        use_fit = fit_mape < raw_mape
        if use_fit:
            table.correction[batch] = (float(a), float(b))
        else:  # a re-check drops a correction that no longer helps
            table.correction.pop(batch, None)
        report["batches"][str(batch)] = {
            "mape_raw": raw_mape, "mape_corrected_loo": fit_mape, "correction": [float(a), float(b)] if use_fit else None,
            "subnets": [{"name": name, "predicted_s": pp, "measured_s": mm}
                        for (name, _), pp, mm in zip(archs, pred, meas)]}
    return report


def check_archs(table: LatencyTable, supernet: UNet, batches: list[int], n: int, seed: int = 0
                ) -> dict[int, list[tuple[str, dict[str, str]]]]:
    """The networks `check` times at each batch: the base, the table's fastest, and `n` random subnets (the same
    ones for the same table, seed and batches, so that a stored check can be scored again by another predictor)."""
    rng = torch.Generator().manual_seed(seed + 1000)
    out = {}
    for batch in batches:
        named = {"base": base_arch(supernet), "fastest": {**derive_arch(supernet), **table.fastest(batch)}}
        out[batch] = [(k, a) for k, a in named.items() if a is not None] + [
            (f"random{i}", random_arch(supernet, rng)) for i in range(n)]
    return out


def _mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - meas) / meas) * 100)
