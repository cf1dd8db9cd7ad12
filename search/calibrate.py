"""`srnas profile --calibrate`: adapt a latency table timed elsewhere to this host in about a minute.

Instead of timing every candidate block (about 10 minutes for the tiny space), time a few reference blocks per
candidate and a few whole reference networks, fit `export.calibration` on them, and scale the whole table.
The references are chosen from the table alone (`pick_blocks`, seeded random networks), so the same table
always gives the same references, on any host.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from export.calibration import KIT_DIR, KIT_FILE, Calibration, fit, pick_blocks, read_kit
from export.runtime import host_id
from models.checkpoint import write_json
from models.unet import UNet
from search.latency import LatencyTable, ProfileConfig, _slot_shapes, fastest_of, make_timer, time_network
from search.supernet import extract, random_arch

NET_SEED = 2000  # reference networks; the table's check uses seed + 1000, so they are other networks


@dataclass
class CalibrateConfig:
    per_candidate: int = 3  # reference blocks per candidate
    nets: int = 5  # whole reference networks, for the table's rest
    warmup: int = 2
    reps: int = 5
    rounds: int = 2  # each timing is the fastest of this many medians: a VM's noisy neighbours only slow it down


def reference_nets(supernet: UNet, n: int) -> list[dict[str, str]]:
    rng = torch.Generator().manual_seed(NET_SEED)
    return [random_arch(supernet, rng) for _ in range(n)]


def calibrate(table: LatencyTable, supernet: UNet, profile: ProfileConfig, cfg: CalibrateConfig | None = None,
              progress: bool = True) -> tuple[LatencyTable, dict[str, Any]]:
    """The table mapped onto this host, and a report of the references, their timings and the fit."""
    cfg = cfg or CalibrateConfig()
    t0 = time.perf_counter()
    timer = fastest_of(make_timer(ProfileConfig(profile.backend, profile.batches, profile.threads, cfg.warmup,
                                                cfg.reps, profile.size, device=profile.device)), cfg.rounds)
    batches = sorted(table.fixed)
    refs = pick_blocks(table.entries, cfg.per_candidate)
    _, modules = _slot_shapes(supernet, profile.size)
    blocks = []
    for e in tqdm(refs, disable=not progress, desc="calibrate: reference blocks", unit="block"):
        module, args = modules[(e["slot"], e["candidate"], tuple(e["shape"][1:]), tuple(e["out_shape"][1:]))]
        for b in batches:
            b_args = tuple(a.repeat(b, *[1] * (a.dim() - 1)) for a in args)
            blocks.append((e["candidate"], b, table.seconds(e["slot"], e["candidate"], b,
                                                                   entry_context(table, e["slot"], e["shape"][1:],
                                                                                 e["out_shape"][1:])),
                           timer(module, b_args)))
    nets = []
    for arch in tqdm(reference_nets(supernet, cfg.nets), disable=not progress, desc="calibrate: reference networks"):
        net = extract(supernet, arch)
        nets += [(b, table.parts(arch, b), time_network(net, b, timer, profile.size)) for b in batches]
    cal = fit(blocks, nets)
    seconds = time.perf_counter() - t0
    meta = {"host": host_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "calibrated": {"from_host": table.meta.get("host"), "from_created": table.meta.get("created"),
                           "from_version": table.meta.get("version"), "seconds": round(seconds, 1),
                           "reference_blocks": len(refs), "reference_nets": cfg.nets, "scales": cal.to_dict()}}
    report = {"seconds": seconds, "blocks": [list(b) for b in blocks], "nets": [[b, p, m] for b, p, m in nets],
              "fit": cal.to_dict()}
    return table.calibrated(cal, meta), report


def write_kit(model_dir: str | Path, table: LatencyTable, source: str, supernet: UNet, cfg: CalibrateConfig | None = None,
              size: int = 128) -> dict[str, Any]:
    """Put the calibration kit into a model folder, so that a server can map `table` onto its host without torch:
    the reference blocks and networks as ONNX files (exported once, random weights: only their time matters), and
    this table's seconds for each of them under `source`, beside those of tables added before."""
    cfg = cfg or CalibrateConfig()
    kit_dir = Path(model_dir) / KIT_DIR
    kit = read_kit(model_dir) or {"preset": table.meta.get("preset"), "space": table.meta.get("space"), "size": size,
                                  "blocks": [], "nets": [], "tables": {}}
    if not kit["blocks"]:
        kit_dir.mkdir(parents=True, exist_ok=True)
        _export_references(kit, kit_dir, (source, table), supernet, cfg, size)
    batches = sorted(table.fixed)
    kit["tables"][source] = {
        "host": table.meta.get("host"), "threads": table.meta.get("threads"),
        "blocks": [{str(b): table.seconds(e["slot"], e["candidate"], b,
                                          entry_context(table, e["slot"], e["shape"], e["out_shape"]))
                    for b in batches} for e in kit["blocks"]],
        "nets": [{str(b): table.parts(n["arch"], b) for b in batches} for n in kit["nets"]]}
    write_json(kit_dir / KIT_FILE, kit)
    return kit


# Reference files already exported in this process, by what decides them: a pipeline deploys every model of a
# preset against one table, and each export of the same ~40 networks took about a minute
_EXPORTED: dict[str, tuple[Path, list, list]] = {}


def _export_references(kit: dict[str, Any], kit_dir: Path, named: tuple[str, LatencyTable], supernet: UNet,
                       cfg: CalibrateConfig, size: int) -> None:
    """The kit's reference blocks and networks as ONNX files in kit_dir, with their records in `kit`."""
    source, table = named
    key = json.dumps([source, table.meta.get("host"), table.meta.get("created"), table.meta.get("version"),
                      supernet.cfg.to_dict(), asdict(cfg), size], sort_keys=True, default=str)
    done = _EXPORTED.get(key)
    if done and all((done[0] / r["file"]).is_file() for r in done[1] + done[2]):
        for r in done[1] + done[2]:
            shutil.copyfile(done[0] / r["file"], kit_dir / r["file"])
        kit["blocks"], kit["nets"] = copy.deepcopy(done[1]), copy.deepcopy(done[2])
        return
    from export.onnx_export import to_onnx

    _, modules = _slot_shapes(supernet, size)
    for i, e in enumerate(pick_blocks(table.entries, cfg.per_candidate)):
        module, args = modules[(e["slot"], e["candidate"], tuple(e["shape"][1:]), tuple(e["out_shape"][1:]))]
        names = [f"input{j}" for j in range(len(args))]
        (kit_dir / f"block{i:02d}.onnx").write_bytes(to_onnx(_zeroed(module), args, names))
        kit["blocks"].append({"file": f"block{i:02d}.onnx", "candidate": e["candidate"], "slot": e["slot"],
                              "shape": e["shape"][1:], "out_shape": e["out_shape"][1:],
                              "inputs": {n: list(a.shape[1:]) for n, a in zip(names, args)}})
    for i, arch in enumerate(reference_nets(supernet, cfg.nets)):
        net = _zeroed(extract(supernet, arch))
        args = (torch.zeros(1, net.cfg.in_channels, size, size), torch.full((1,), 0.5))
        (kit_dir / f"net{i}.onnx").write_bytes(to_onnx(net, args, ["x", "noise_level"]))
        kit["nets"].append({"file": f"net{i}.onnx", "arch": arch,
                            "inputs": {"x": [net.cfg.in_channels, size, size], "noise_level": []}})
    _EXPORTED[key] = (kit_dir, copy.deepcopy(kit["blocks"]), copy.deepcopy(kit["nets"]))


def _zeroed(module: torch.nn.Module) -> torch.nn.Module:
    """A copy with every weight zero: the same operators and shapes, so the same time, in files that compress to
    almost nothing in git and in wheels (the kit's networks would otherwise add megabytes of random weights)."""
    out = copy.deepcopy(module)
    with torch.no_grad():
        for p in out.parameters():
            p.zero_()
    return out


def entry_context(table: LatencyTable, slot: str, shape: list[int], out_shape: list[int]) -> str:
    """The width context in which the table holds these shapes (without the batch axis) for `slot`."""
    for ctx, slots in table.contexts.items():
        s = slots.get(slot)
        if s and s["shape"] == list(shape) and s["out_shape"] == list(out_shape):
            return ctx
    raise KeyError(f"no width context holds {slot} at {shape}")


__all__ = ["Calibration", "CalibrateConfig", "calibrate", "reference_nets", "entry_context", "write_kit"]
