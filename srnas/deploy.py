"""`srnas deploy`: make a model folder ready to serve.

Writes `model.onnx` (and, with int8, a calibrated `model.int8.onnx`) into the folder, measures the
int8 variant's PSNR cost through the real ONNX Runtime sampler, and records the search-time latency
prediction per batch from the lookup table in `deploy.json`. `srnas bench --record` adds measurements.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.backends import ONNX_FILES, ort_denoiser
from export.onnx_export import export_unet
from export.record import MAX_PSNR_DROP_DB, key_for, read_record, record_network, update_record
from export.runtime import RuntimeConfig
from models.checkpoint import ModelBundle, load_model
from models.errors import UserError
from models.spec import read_spec

ROOT = Path(__file__).resolve().parents[1]
LUTS = ROOT / "search" / "luts"
# the table deploy records when none is named, per preset: the 2-thread one (one worker with the whole 2-core
# host); `--lut` adds the tables of other thread counts or hosts beside it
DEFAULT_LUTS = {"tiny": LUTS / "tiny-default-ort.json",
                "tiny-fold2-nonorm": LUTS / "tiny-fold2-nonorm-default-ort-2t-epyc.json"}


def default_lut(model_dir: str | Path | None) -> str:
    """The shipped latency table for the model folder's preset (the shipped model's without a folder); the preset
    comes from config.json alone, as deploy builds the network afterwards anyway."""
    name = read_spec(model_dir).preset
    if name not in DEFAULT_LUTS:
        raise UserError(f"no shipped latency table for preset {name!r}: name one with --lut (or --lut none)")
    return str(DEFAULT_LUTS[name])


@dataclass
class DeployConfig:
    lut: str | None = None  # None: record no prediction
    int8: bool = False
    crops_per_image: int = 4  # validation crops per image (8 in all, as the README's table) for the variant's PSNR
    threads: int = 0


def model_arch(bundle: ModelBundle, supernet) -> dict[str, str]:
    """The model as an arch of the table's search space: a searched model's choices, else the base."""
    from search.latency import base_arch
    from search.supernet import derive_arch

    choices = (bundle.meta.get("arch") or {}).get("choices")
    if choices:
        return {**derive_arch(supernet), **choices}
    arch = base_arch(supernet)
    if arch is None:
        raise UserError("the table's search space cannot express the base network")
    return arch


def shown_path(path: str | Path) -> str:
    """A path inside the repository as it is written there, so a written file does not name this machine."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def predicted_from_lut(bundle: ModelBundle, lut: str | Path) -> dict[str, Any]:
    from models.config import preset
    from models.unet import UNet
    from search.latency import LatencyTable
    from search.space import make_space
    from search.supernet import space_config

    table = LatencyTable.load(lut)
    name, space = table.meta.get("preset", "tiny"), table.meta.get("space", "default")
    if name != bundle.preset:
        raise UserError(f"{lut}: measured for preset {name!r}, but the model is {bundle.preset!r}")
    base = preset(name)
    supernet = UNet(space_config(base, make_space(space, base))).eval()
    arch = model_arch(bundle, supernet)
    try:
        seconds = {str(b): table.predict(arch, b) for b in sorted(table.fixed)}
        parts = {str(b): table.parts(arch, b) for b in sorted(table.fixed)}
    except KeyError as exc:
        raise UserError(f"{lut}: the model's network is outside the table ({exc})") from None
    if bundle.path is not None:  # the references a server times to map this table onto its own host
        from search.calibrate import write_kit

        write_kit(bundle.path, table, shown_path(lut), supernet)
    return {"source": shown_path(lut), "host": table.meta["host"], "version": table.meta["version"],
            "threads": table.meta.get("threads"), "corrected": sorted(str(b) for b in table.correction),
            "seconds": seconds, "parts": parts}


def variant_quality(bundle: ModelBundle, variant_file: Path, cfg: DeployConfig) -> dict[str, Any]:
    """PSNR/SSIM(Y) of fp32 and the variant, both through ONNX Runtime, at the model's served setting."""
    from search.evaluate import EvalConfig, evaluate

    steps, sampler = int(bundle.defaults["steps"]), bundle.defaults["sampler"]
    ecfg = EvalConfig(steps=[steps], samplers=[sampler], crops_per_image=cfg.crops_per_image)
    rt = RuntimeConfig(intra_threads=cfg.threads)
    fp32 = evaluate(bundle, ecfg, progress=False, denoiser=ort_denoiser(bundle.path / ONNX_FILES["fp32"], rt))
    var = evaluate(bundle, ecfg, progress=False, denoiser=ort_denoiser(variant_file, rt))
    a, b = fp32["results"][0], var["results"][0]
    drop = a["psnr_y"] - b["psnr_y"]
    return {"file": variant_file.name, "served": f"{sampler} {steps}", "crops": fp32["crops"],
            "fp32_psnr_db": a["psnr_y"], "psnr_db": b["psnr_y"], "psnr_drop_db": drop,
            "fp32_ssim": a["ssim_y"], "ssim": b["ssim_y"], "servable": drop <= MAX_PSNR_DROP_DB}


def deploy(model_dir: str | Path, cfg: DeployConfig) -> dict[str, Any]:
    bundle = load_model(model_dir)
    path = Path(bundle.path)
    export_unet(bundle.net, path / ONNX_FILES["fp32"])
    record_network(path, bundle.net)  # what a server without torch reports of its model
    rec: dict[str, Any] = read_record(path)
    if cfg.lut:
        pred = predicted_from_lut(bundle, cfg.lut)  # beside the tables of other thread counts, not over them
        rec = update_record(path, "predicted", key_for(read_record(path), "onnxruntime", pred), pred)
    if cfg.int8:
        from export.quantize import CalibrationConfig, quantize_int8
        from search.data import calibration_crops

        crops = calibration_crops(CalibrationConfig.crops, CalibrationConfig.seed)
        out = quantize_int8(path / ONNX_FILES["fp32"], path / ONNX_FILES["int8"], bundle, crops)
        rec = update_record(path, "variants", "int8", variant_quality(bundle, out, cfg))
    return rec
