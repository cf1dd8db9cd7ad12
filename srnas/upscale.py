"""`srnas upscale`: x2 super-resolution of image files, folders and glob patterns.

The network runs on ONNX Runtime where the model folder has its `model.onnx` (the serving install has no torch),
else on torch. An image with transparency is upscaled on white, as the network sees it, and keeps its alpha
channel (upscaled bicubically) in the formats that hold one. Torch and tqdm are imported only where used: both
belong to the training install, and the serving install upscales without them.
"""
from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import UserError
from models.imaging import MIN_SIDE, SCALE, has_alpha, to_rgb

# output suffix -> Pillow format
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF"}
FORMAT_NAMES = tuple(s[1:] for s in FORMATS)  # --format's choices
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")  # the others get the image composited on white
QUALITY_FORMATS = ("JPEG", "WEBP")  # lossy: --quality applies
BACKENDS = ("onnxruntime", "torch")
GLOB_CHARS = "*?["


@dataclass
class Job:
    source: Path
    target: Path

    @property
    def format(self) -> str:
        return FORMATS[self.target.suffix.lower()]


@dataclass
class Picture:
    rgb: np.ndarray  # uint8 HWC, transparency composited on white: what the network sees
    alpha: np.ndarray | None  # uint8 HW, where the input had transparency


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (their images) or glob patterns")
    p.add_argument("-o", "--output", required=True,
                   help="an image file (one input) or a folder, created if missing; outputs keep the input's name")
    p.add_argument("--format", choices=FORMAT_NAMES,
                   help="format of the images written into an output folder (default: each input's own)")
    p.add_argument("--quality", type=int, metavar="N", help="JPEG or WebP quality, 1-100 (default: Pillow's)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="default: onnxruntime where the model folder has model.onnx, else torch")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--sampler", help="ddim or ddpm (default: the model's)")
    p.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="a shipped model's name (default, real) or a model folder (default: default)")
    p.add_argument("--batch", type=int, default=8, help="tiles per network call")
    p.add_argument("--overlap", type=int, default=16, help="HR pixels shared by neighbouring tiles")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (default: the CPU quota)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")


# ---- inputs and outputs ----------------------------------------------------------------------
def expand(inputs: list[str]) -> list[Path]:
    """Every input file, in the order given, each once: a file, a folder's files (not its subfolders, nor
    hidden files) or a glob pattern's matching files. Patterns are expanded here, so a quoted one works too."""
    found: dict[Path, Path] = {}
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files = [path]
        elif any(c in text for c in GLOB_CHARS):
            files = [Path(m) for m in sorted(glob.glob(text)) if Path(m).is_file()]
            if not files:
                raise UserError(f"{text}: no file matches")
        else:
            raise UserError(f"{text}: no such file or folder")
        for f in files:
            found.setdefault(f.resolve(), f)
    return list(found.values())


def output_is_file(output: Path) -> bool:
    """An existing folder, or a new name without a suffix, is a folder; anything else names one image file."""
    return not output.is_dir() and (output.exists() or output.suffix != "")


def plan(sources: list[Path], output: str, fmt: str | None) -> list[Job]:
    """Where each input is written; refused before any work when a target would overwrite an input, when two
    inputs would write the same file, or when one file cannot take several inputs."""
    out = Path(output)
    if output_is_file(out):
        if out.suffix.lower() not in FORMATS:
            raise UserError(f"{out}: unknown output format; use {', '.join(FORMATS)}")
        if not out.parent.is_dir():
            raise UserError(f"{out.parent}: output folder does not exist")
        if len(sources) != 1:
            raise UserError(f"{out} is one file but the inputs hold {len(sources)} files; give a folder as -o")
        if fmt and FORMATS[f".{fmt}"] != FORMATS[out.suffix.lower()]:
            raise UserError(f"--format {fmt} contradicts the output file's suffix ({out.suffix})")
        jobs = [Job(sources[0], out)]
    else:
        jobs = [Job(src, out / (src.stem + _suffix(src, fmt))) for src in sources]
    _refuse_overwrites(jobs)
    return jobs


def _suffix(source: Path, fmt: str | None) -> str:
    if fmt:
        return f".{fmt}"
    return source.suffix if source.suffix.lower() in FORMATS else ".png"


def _refuse_overwrites(jobs: list[Job]) -> None:
    inputs = {job.source.resolve(): job.source for job in jobs}
    targets: dict[Path, Path] = {}
    for job in jobs:
        target = job.target.resolve()
        if target in inputs:
            raise UserError(f"{job.target} would overwrite the input {inputs[target]}; choose another -o")
        if target in targets:
            raise UserError(f"{targets[target]} and {job.source} would both be written to {job.target}; "
                            "give --format or another -o")
        targets[target] = job.source


def check_quality(jobs: list[Job], quality: int | None) -> None:
    if quality is None:
        return
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be in 1..100, got {quality}")
    other = next((job for job in jobs if job.format not in QUALITY_FORMATS), None)
    if other is not None:
        raise UserError(f"--quality applies to JPEG and WebP output; {other.target} is {other.format}")


# ---- images ----------------------------------------------------------------------------------
def read_picture(path: Path) -> Picture:
    """The image as the network's RGB input and, where it has transparency, its alpha channel; both upright
    (a camera's EXIF orientation applied)."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
            alpha = np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., 3] if has_alpha(img) else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise UserError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]}; each side must be at least {MIN_SIDE} px")
    return Picture(rgb, alpha)


def upscaled_alpha(alpha: np.ndarray) -> np.ndarray:
    """The alpha channel at the output size, bicubic (transparency carries no detail worth sampling)."""
    h, w = alpha.shape
    return np.asarray(Image.fromarray(alpha).resize((w * SCALE, h * SCALE), Image.Resampling.BICUBIC))


def save(sr: np.ndarray, alpha: np.ndarray | None, job: Job, quality: int | None) -> None:
    img = Image.fromarray(sr)
    if alpha is not None and job.format in ALPHA_FORMATS:
        img.putalpha(Image.fromarray(upscaled_alpha(alpha)))
    options: dict[str, Any] = {"quality": quality} if quality is not None else {}
    try:
        img.save(job.target, format=job.format, **options)
    except OSError as exc:
        raise UserError(f"{job.target}: cannot write ({exc})") from None


# ---- the network -----------------------------------------------------------------------------
def load(model: str | None, backend: str | None, threads: int):  # -> (LoadedDenoiser, ModelSpec)
    """The model's denoiser on the chosen runtime (ONNX Runtime where the folder has its model.onnx)."""
    from export.backends import BackendConfig, load_denoiser
    from models.spec import read_spec, shipped_or_folder

    folder = shipped_or_folder(model)
    spec = read_spec(folder)
    name = backend or ("onnxruntime" if (folder / "model.onnx").is_file() else "torch")
    return load_denoiser(spec, BackendConfig(name, threads=threads)), spec


def progress_bar(enabled: bool, name: str) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    """(the upscaler's progress callback, close) for one image: a tqdm bar over its tiles x steps on a terminal;
    nothing elsewhere, or where tqdm (the training install) is missing."""
    if not enabled:
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None, lambda: None
    bar = tqdm(desc=name, unit="tile-step", leave=False, file=sys.stderr)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    return update, bar.close


# ---- the command -----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from models.sampler import SamplerConfig
    from models.upscaler import TileConfig, upscale

    if args.batch < 1 or not 0 <= args.overlap < 128 or args.threads < 0:
        raise UserError("--batch must be >= 1, --overlap in 0..127 and --threads >= 0")
    jobs = plan(expand(args.inputs), args.output, args.format)
    check_quality(jobs, args.quality)
    denoiser, spec = load(args.model, args.backend, args.threads)
    d = spec.defaults
    cfg = SamplerConfig(d["sampler"] if args.sampler is None else args.sampler,
                        d["steps"] if args.steps is None else args.steps,
                        d.get("eta", 0.0) if args.eta is None else args.eta)
    cfg.validate(spec.diffusion.schedule.T)
    _make_folder(jobs[0].target.parent)
    tiles = TileConfig(overlap=args.overlap, batch=args.batch)
    show = not args.no_progress and sys.stderr.isatty()
    written = 0
    for job in jobs:
        try:
            pic = read_picture(job.source)
        except UserError as exc:
            if len(jobs) == 1:
                raise
            print(f"srnas upscale: skipped {exc}", file=sys.stderr)
            continue
        on_progress, close = progress_bar(show, job.source.name)
        try:
            sr = upscale(denoiser.run, spec.diffusion, pic.rgb, cfg, args.seed, tiles, on_progress)
        finally:
            close()
        save(sr, pic.alpha, job, args.quality)
        written += 1
        alpha = ", alpha kept" if pic.alpha is not None and job.format in ALPHA_FORMATS else ""
        print(f"{job.source} ({pic.rgb.shape[1]}x{pic.rgb.shape[0]}) -> {job.target} ({sr.shape[1]}x{sr.shape[0]}"
              f"{alpha}), {cfg.sampler} {cfg.steps} steps, seed {args.seed}, {denoiser.label}")
    if not written:
        raise UserError(f"no image written: none of the {len(jobs)} input files is a readable image")
    return 0


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the output folder ({exc})") from None
