"""Training and validation pairs: the photos scikit-image ships, or a DIV2K-layout folder.

All images are float32 in [-1, 1], CHW. The conditioning image is the bicubic (a = -0.5, as in
MATLAB's imresize) upsample of the LR image, computed on a margin around each crop so that a crop
sees the same values as the full-image upsample that inference tiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import UserError
from models.imaging import MIN_SIDE, SCALE, bicubic_down, bicubic_up, to_float, to_rgb
from search.degrade import BLUR_MARGIN, DegradeConfig, degrade, jpeg

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Every suitable image inside scikit-image's wheel, split by image (the two motorcycle views stay together):
# the colour photographs and the natural or texture grey ones (grey is replicated to RGB). Left out:
# synthetic (chessboard_*, color, logo, phantom), binary (horse), text (page, text), and files too small
# for a 128 px crop (microaneurysms, multipage*, no_time_for_that_tiny).
# "train" is every training image; its "alpha" part feeds only the architecture parameters during a search.
BUILTIN_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("chelsea.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
              "brick.png", "cell.png", "ihc.png", "clock_motion.png", "grass.png"),
    "alpha": ("ihc.png", "clock_motion.png", "grass.png"),
    "val": ("retina.jpg", "coins.png", "gravel.png"),
    "test": ("astronaut.png", "coffee.png", "camera.png", "moon.png"),
}
SPLITS = tuple(BUILTIN_SPLITS)
BUILTIN_TRAIN, BUILTIN_VAL, BUILTIN_TEST = BUILTIN_SPLITS["train"], BUILTIN_SPLITS["val"], BUILTIN_SPLITS["test"]


class DataError(UserError):
    """A user-facing problem with input images or folders."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode any Pillow-readable image file to uint8 RGB, with user-facing errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            arr = to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    check_size(arr, str(path))
    return arr


def check_size(arr: np.ndarray, what: str) -> None:
    if min(arr.shape[:2]) < MIN_SIDE:
        raise DataError(f"{what}: image is {arr.shape[1]}x{arr.shape[0]}; each side must be at least {MIN_SIDE} px")


@dataclass
class Pair:
    name: str
    hr: np.ndarray  # float CHW, even sides
    lr: np.ndarray  # float CHW, half the HR size


def make_pair(name: str, hr_u8: np.ndarray, lr_u8: np.ndarray | None = None) -> Pair:
    hr = to_float(hr_u8)
    if lr_u8 is None:
        lr = bicubic_down(hr)
    else:
        lr = to_float(lr_u8)
    h, w = lr.shape[1] * SCALE, lr.shape[2] * SCALE
    if hr.shape[1] < h or hr.shape[2] < w:
        raise DataError(f"{name}: HR {hr.shape[2]}x{hr.shape[1]} is smaller than 2x its LR {lr.shape[2]}x{lr.shape[1]}")
    return Pair(name, hr[:, :h, :w], lr)


def builtin_pairs(split: str) -> list[Pair]:
    """scikit-image's bundled images of one split; nothing is downloaded."""
    import skimage

    names = BUILTIN_SPLITS.get(split)
    if names is None:
        raise DataError(f"unknown split {split!r}; use {', '.join(SPLITS)}")
    root = Path(skimage.__file__).parent / "data"  # files inside the wheel, read directly
    return [make_pair(Path(n).stem, load_rgb(root / n)) for n in names]


def folder_pairs(hr_dir: str | Path, lr_dir: str | Path | None = None) -> list[Pair]:
    """DIV2K layout: HR `0001.png`; optional LR folder with `0001x2.png` (or `0001.png`)."""
    hr_dir = Path(hr_dir)
    if not hr_dir.is_dir():
        raise DataError(f"{hr_dir}: not a folder")
    files = sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{hr_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for f in files:
        lr = None
        if lr_dir is not None:
            lr = load_rgb(_lr_file(Path(lr_dir), f))
        pairs.append(make_pair(f.stem, load_rgb(f), lr))
    return pairs


def _lr_file(lr_dir: Path, hr_file: Path) -> Path:
    if not lr_dir.is_dir():
        raise DataError(f"{lr_dir}: not a folder")
    for stem in (f"{hr_file.stem}x{SCALE}", hr_file.stem):
        for suffix in IMAGE_SUFFIXES:
            cand = lr_dir / f"{stem}{suffix}"
            if cand.is_file():
                return cand
    raise DataError(f"{lr_dir}: no LR image for {hr_file.name} (expected {hr_file.stem}x{SCALE}.png)")


def load_pairs(source: str, split: str, lr_dir: str | None = None) -> list[Pair]:
    """`builtin`, or a HR folder (DIV2K layout; a split subfolder `train`/`alpha`/`val`/`test` is used if present)."""
    if source == "builtin":
        return builtin_pairs(split)
    root = Path(source)
    sub = root / split
    return folder_pairs(sub if sub.is_dir() else root, lr_dir)


def has_split(source: str, split: str) -> bool:
    """Whether the data names its own `split` (the built-in images do; a folder needs the subfolder)."""
    return split in BUILTIN_SPLITS if source == "builtin" else (Path(source) / split).is_dir()


# Bicubic a=-0.5 at x2 reads 2 LR pixels either side; 4 keeps crops identical to the full upsample.
MARGIN = 4


def crop(pair: Pair, y: int, x: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lr, bicubic, hr) for the HR crop at even (y, x) of side `size`."""
    ly, lx, ls = y // SCALE, x // SCALE, size // SCALE
    y0, x0 = max(ly - MARGIN, 0), max(lx - MARGIN, 0)
    y1, x1 = min(ly + ls + MARGIN, pair.lr.shape[1]), min(lx + ls + MARGIN, pair.lr.shape[2])
    up = bicubic_up(pair.lr[:, y0:y1, x0:x1])
    oy, ox = (ly - y0) * SCALE, (lx - x0) * SCALE
    bic = up[:, oy: oy + size, ox: ox + size]
    return pair.lr[:, ly: ly + ls, lx: lx + ls], bic, pair.hr[:, y: y + size, x: x + size]


def degraded_crop(pair: Pair, y: int, x: int, size: int, cfg: DegradeConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lr, bicubic, hr) like `crop`, with the LR made from the HR around the crop by a random degradation
    (the margin keeps the blur and the bicubic upsample free of edge effects inside the crop)."""
    m = SCALE * (MARGIN + BLUR_MARGIN)
    y0, x0 = max(y - m, 0), max(x - m, 0)
    y1, x1 = min(y + size + m, pair.hr.shape[1]), min(x + size + m, pair.hr.shape[2])
    hr = pair.hr[:, y0:y1, x0:x1]
    return crop(Pair(pair.name, hr, degrade(hr, cfg, rng)), y - y0, x - x0, size)


def jpeg_pairs(pairs: list[Pair], quality: int) -> list[Pair]:
    """The same pairs with each whole LR image JPEG-compressed at `quality`: how photos usually arrive."""
    return [Pair(p.name, p.hr, jpeg(p.lr, quality)) for p in pairs]


def _augment(arrs: tuple[np.ndarray, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for a in arrs:
        a = np.rot90(a, k, axes=(1, 2))
        out.append(np.ascontiguousarray(a[:, :, ::-1] if flip else a))
    return tuple(out)


class CropSampler:
    """Random HR crops with their LR and bicubic, flipped and rotated; state is JSON-serialisable. With a
    degradation, each crop's LR is degraded afresh (the pair's own LR is not used)."""

    def __init__(self, pairs: list[Pair], size: int = 128, seed: int = 0, augment: bool = True,
                 degradation: DegradeConfig | None = None):
        usable = [p for p in pairs if min(p.hr.shape[1:]) >= size]
        if not usable:
            raise DataError(f"no image is at least {size} px on each side")
        self.pairs, self.size, self.augment, self.degradation = usable, size, augment, degradation
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        items = [self._one() for _ in range(n)]
        return tuple(np.stack(col) for col in zip(*items))  # type: ignore[return-value]

    def _one(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.pairs[int(self.rng.integers(len(self.pairs)))]
        y = 2 * int(self.rng.integers((p.hr.shape[1] - self.size) // 2 + 1))
        x = 2 * int(self.rng.integers((p.hr.shape[2] - self.size) // 2 + 1))
        if self.degradation is None:
            arrs = crop(p, y, x, self.size)
        else:
            arrs = degraded_crop(p, y, x, self.size, self.degradation, self.rng)
        return _augment(arrs, self.rng) if self.augment else arrs

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


FLAT_STD = 0.02  # HR crops flatter than about 2.5/255 (a retina photo's black corners) say nothing about SR


def _grid(h: int, w: int, size: int, side: int) -> list[tuple[int, int]]:
    ys = np.linspace(0, h - size, side).astype(int) // 2 * 2
    xs = np.linspace(0, w - size, side).astype(int) // 2 * 2
    return [(int(y), int(x)) for y in ys for x in xs]


def eval_crops(pairs: list[Pair], size: int = 128, per_image: int = 4) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed crops spread evenly over each image: (name, lr, bicubic, hr).

    Flat crops are left out, because bicubic reproduces them exactly and their PSNR is infinite; an image with
    flat regions draws its remaining crops from ever finer grids, so it still gives `per_image` crops."""
    out = []
    for p in pairs:
        h, w = p.hr.shape[1:]
        if min(h, w) < size:
            continue
        side, seen, kept = int(np.ceil(np.sqrt(per_image))), set(), []
        while len(kept) < per_image and side <= 4 * per_image:
            for y, x in _grid(h, w, size, side):
                if len(kept) < per_image and (y, x) not in seen:
                    seen.add((y, x))
                    c = crop(p, y, x, size)
                    if c[2].std() >= FLAT_STD:
                        kept.append(c)
            side += 1
        out += [(f"{p.name}#{i}", *c) for i, c in enumerate(kept)]
    return out


def scored_crops(source: str, split: str, lr_dir: str | None = None, per_image: int = 4,
                 lr_jpeg: int = 0) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """`eval_crops` of a split, with each whole LR image first saved as JPEG at `lr_jpeg` where it is > 0."""
    pairs = load_pairs(source, split, lr_dir)
    return eval_crops(jpeg_pairs(pairs, lr_jpeg) if lr_jpeg else pairs, per_image=per_image)


def calibration_crops(n: int, seed: int = 0, size: int = 128) -> np.ndarray:
    """`n` bicubic-upsampled crops of the built-in training photos (N x 3 x size x size in [-1, 1]): what int8
    calibration samples on."""
    _, bic, _ = CropSampler(load_pairs("builtin", "train"), size, seed=seed, augment=False).batch(n)
    return bic
