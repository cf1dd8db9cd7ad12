"""The README's before/after picture: bicubic | the shipped model | the original, on a crop of a test image.

    python -m docs.figures [--image astronaut] [--box Y X SIZE] [--model default] [--out docs/images/before-after.png]

The image is one of scikit-image's bundled photos from the *test* split (search/data.py BUILTIN_SPLITS), so
the model never saw it in training or selection. The HR crop is downscaled x2 (bicubic, antialiased, as in
training), then upscaled by the shipped model through ONNX Runtime (export/backends.py `load_denoiser`,
models/upscaler.py `upscale`) at its own default sampler and steps, and by bicubic interpolation. Each panel is
shown at `--zoom` with nearest-neighbour pixels, so the difference is visible; the labels carry PSNR(Y).
Needs the `[train]` install (scikit-image).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "before-after.png"
GAP, LABEL_H, BG = 6, 22, (255, 255, 255)


def panels(image: str, box: tuple[int, int, int], model: str = "default", seed: int = 0,
           threads: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """(bicubic, model output, original) as uint8 HWC arrays of one HR crop, and their labels."""
    import skimage

    from export.backends import BackendConfig, load_denoiser
    from models.imaging import bicubic_down, bicubic_up, to_float, to_uint8
    from models.sampler import SamplerConfig
    from models.spec import read_spec, shipped_or_folder
    from models.upscaler import upscale
    from search.data import BUILTIN_SPLITS, load_rgb
    from search.metrics import psnr_y

    names = {Path(n).stem: n for n in BUILTIN_SPLITS["test"]}
    if image not in names:
        raise SystemExit(f"--image must be a test-split image: {', '.join(names)}")
    y, x, size = box
    if size % 2 or size < 16:
        raise SystemExit("--box SIZE must be even and at least 16")
    full = load_rgb(Path(skimage.__file__).parent / "data" / names[image])
    hr_u8 = full[y: y + size, x: x + size]
    if hr_u8.shape[:2] != (size, size):
        raise SystemExit(f"--box {y} {x} {size} leaves {image} ({full.shape[1]}x{full.shape[0]})")
    lr_u8 = to_uint8(bicubic_down(to_float(hr_u8)))
    bic_u8 = to_uint8(bicubic_up(to_float(lr_u8)))
    spec = read_spec(shipped_or_folder(model))
    net = load_denoiser(spec, BackendConfig("onnxruntime", threads=threads))
    d = spec.defaults
    cfg = SamplerConfig(d["sampler"], d["steps"], d.get("eta", 0.0))
    sr_u8 = upscale(net.run, spec.diffusion, lr_u8, cfg, seed)
    steps = f"{cfg.sampler.upper()} {cfg.steps} step{'s' if cfg.steps > 1 else ''}"
    labels = [f"bicubic  {psnr_y(bic_u8, hr_u8):.2f} dB",
              f"srnas {model} ({steps})  {psnr_y(sr_u8, hr_u8):.2f} dB",
              "original"]
    return [bic_u8, sr_u8, hr_u8], labels


def compose(images: list[np.ndarray], labels: list[str], zoom: int) -> Image.Image:
    """The panels side by side, `GAP` px apart, each with its label above it."""
    h, w = images[0].shape[:2]
    pw, ph = w * zoom, h * zoom
    canvas = Image.new("RGB", (len(images) * pw + (len(images) - 1) * GAP, LABEL_H + ph), BG)
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    for i, (img, label) in enumerate(zip(images, labels)):
        left = i * (pw + GAP)
        canvas.paste(Image.fromarray(img).resize((pw, ph), Image.Resampling.NEAREST), (left, LABEL_H))
        draw.text((left + 2, 4), label, fill=(0, 0, 0), font=font)
    return canvas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m docs.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default="astronaut", help="a test-split image of scikit-image (default: astronaut)")
    p.add_argument("--box", type=int, nargs=3, default=(80, 170, 128), metavar=("Y", "X", "SIZE"),
                   help="the HR crop: top, left, side in px (even)")
    p.add_argument("--zoom", type=int, default=2, help="nearest-neighbour magnification of each panel")
    p.add_argument("--model", default="default", help="a shipped model's name or a model folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: the CPU quota)")
    p.add_argument("-o", "--out", default=str(OUT))
    args = p.parse_args(argv)
    images, labels = panels(args.image, tuple(args.box), args.model, args.seed, args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compose(images, labels, args.zoom).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} kB): {' | '.join(labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
