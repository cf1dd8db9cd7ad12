"""`srnas`: one command line for every offline stage."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from models.errors import UserError

Handler = Callable[[argparse.Namespace], int]


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# ---- train ---------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a UNet with the SR3 objective (EMA, checkpoints, resume)")
    p.add_argument("--config", help="YAML file with TrainConfig fields; flags override it")
    p.add_argument("--preset", help="network preset (tiny, sr3-paper)")
    p.add_argument("--iters", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--patch", type=int, help="HR crop side (default 128)")
    p.add_argument("--lr", type=float)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--data", help="'builtin' (scikit-image photos) or a DIV2K-layout HR folder")
    p.add_argument("--lr-dir", help="folder of LR images (e.g. DIV2K_train_LR_unknown/X2); default: bicubic x2")
    p.add_argument("--prediction", choices=["eps", "x0", "v"])
    p.add_argument("--target", choices=["image", "residual"])
    p.add_argument("--residual-scale", type=float)
    p.add_argument("--loss", choices=["l1", "l2"])
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--out", default="runs/train", help="run folder (checkpoint/, model/, train_log.csv)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


def _train_config(args: argparse.Namespace):  # -> TrainConfig
    from search.train import TrainConfig

    base: dict[str, Any] = {}
    if args.config:
        import yaml

        try:
            base = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{args.config}: cannot read config ({exc})") from None
    diff = dict(base.pop("diffusion", {}) or {})
    for key in ("prediction", "target", "residual_scale", "loss"):
        if getattr(args, key) is not None:
            diff[key] = getattr(args, key)
    for key in ("preset", "iters", "batch", "patch", "lr", "ema_decay", "seed", "threads", "data", "lr_dir",
                "checkpoint_every"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    try:
        cfg = TrainConfig.from_dict({**base, "diffusion": diff})
        cfg.unet_config()
    except (TypeError, KeyError) as exc:
        raise UserError(f"invalid training config: {exc}") from None
    if cfg.iters < 1 or cfg.batch < 1 or cfg.patch < 16 or cfg.patch % 16:
        raise UserError("iters and batch must be >= 1, and patch a multiple of 16")
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from search.train import Trainer

    cfg = _train_config(args)
    trainer = Trainer(cfg, args.out)
    if args.resume and trainer.resume():
        if trainer.step >= cfg.iters:
            print(f"{args.out}: already trained for {trainer.step} iterations")
        else:
            print(f"resuming {args.out} at iteration {trainer.step}")
    model_dir = trainer.run(progress=not args.no_progress)
    print(f"model written to {model_dir}")
    return 0


# ---- evaluate ------------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="PSNR/SSIM(Y) against HR and bicubic, with figures")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--data", default="builtin")
    p.add_argument("--lr-dir")
    p.add_argument("--steps", type=_int_list, default=[10, 20, 50], help="comma-separated, e.g. 10,20,50")
    p.add_argument("--samplers", type=_str_list, default=["ddim", "ddpm"])
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--crops", type=int, default=8, help="validation crops per image")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="runs/eval", help="folder for metrics.json, grid.png, trajectory.png")
    p.add_argument("--choose-defaults", action="store_true",
                   help="write the fewest-step setting within 0.05 dB of the best into the model's config.json")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.checkpoint import load_model
    from models.sampler import SamplerConfig
    from search.evaluate import EvalConfig, evaluate

    _threads(args.threads)
    bundle = load_model(args.model)
    for s in args.samplers:
        for k in args.steps:
            SamplerConfig(s, k, args.eta).validate(bundle.diffusion.schedule.T)
    if args.crops < 1 or args.batch < 1:
        raise UserError("--crops and --batch must be >= 1")
    cfg = EvalConfig(args.data, args.lr_dir, args.steps, args.samplers, args.crops, args.batch, args.seed, args.eta)
    report = evaluate(bundle, cfg, args.out, progress=not args.no_progress)
    b = report["bicubic"]
    print(f"{'':>12} {'PSNR(Y)':>8} {'SSIM(Y)':>8}   ({report['crops']} crops of {', '.join(report['images'])})")
    print(f"{'bicubic':>12} {b['psnr_y']:8.3f} {b['ssim_y']:8.4f}")
    for r in report["results"]:
        print(f"{r['sampler'] + ' ' + str(r['steps']):>12} {r['psnr_y']:8.3f} {r['ssim_y']:8.4f}  {r['gain_db']:+.3f} dB")
    print(f"wrote {args.out}/metrics.json, grid.png, trajectory.png")
    if args.choose_defaults:
        from models.checkpoint import CONFIG, read_json, write_json
        from search.evaluate import choose_defaults

        chosen = choose_defaults(report)
        cfg_path = bundle.path / CONFIG
        cfg_json = read_json(cfg_path)
        cfg_json["defaults"] = chosen
        write_json(cfg_path, cfg_json)
        print(f"defaults of {bundle.path}: {chosen['sampler']} {chosen['steps']} steps ({chosen['chosen_by']})")
    return 0


# ---- upscale -------------------------------------------------------------------------------
def _add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="x2 super-resolve an image of any size")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--sampler", help="ddim or ddpm (default: the model's)")
    p.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--batch", type=int, default=8, help="tiles per network call")
    p.add_argument("--overlap", type=int, default=16, help="HR pixels shared by neighbouring tiles")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_upscale)


def cmd_upscale(args: argparse.Namespace) -> int:
    from PIL import Image

    from models.checkpoint import load_model
    from models.sampler import SamplerConfig
    from models.upscaler import TileConfig, torch_denoiser, upscale
    from search.data import load_rgb

    _threads(args.threads)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        raise UserError(f"{out}: unknown output format; use .png, .jpg, .webp, .bmp or .tif")
    if args.batch < 1 or not 0 <= args.overlap < 128:
        raise UserError("--batch must be >= 1 and --overlap in 0..127")
    lr = load_rgb(args.input)
    bundle = load_model(args.model)
    d = bundle.defaults
    cfg = SamplerConfig(d["sampler"] if args.sampler is None else args.sampler,
                        d["steps"] if args.steps is None else args.steps,
                        d.get("eta", 0.0) if args.eta is None else args.eta)
    cfg.validate(bundle.diffusion.schedule.T)
    sr = upscale(torch_denoiser(bundle.net), bundle.diffusion, lr, cfg, args.seed,
                 TileConfig(overlap=args.overlap, batch=args.batch))
    Image.fromarray(sr).save(out)
    print(f"{args.input} ({lr.shape[1]}x{lr.shape[0]}) -> {out} ({sr.shape[1]}x{sr.shape[0]}), "
          f"{cfg.sampler} {cfg.steps} steps, seed {args.seed}")
    return 0


# ---- info ----------------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a preset or a model: params, FLOPs per step, files")
    p.add_argument("--preset", help="describe a randomly initialised base UNet of this preset")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def describe(args: argparse.Namespace) -> dict[str, Any]:
    from models.checkpoint import load_model
    from models.config import PRESETS, preset
    from models.unet import UNet
    from search.costs import count_flops, count_params

    if args.preset and args.model:
        raise UserError("give --preset or --model, not both")
    if args.preset:
        if args.preset not in PRESETS:
            raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(sorted(PRESETS))}")
        net, info = UNet(preset(args.preset)), {"preset": args.preset}
    else:
        bundle = load_model(args.model)
        net = bundle.net
        info = {"preset": bundle.preset, "path": str(bundle.path), "defaults": bundle.defaults,
                "diffusion": bundle.diffusion.cfg.to_dict(), "train_steps": bundle.meta.get("train_steps")}
    size = net.cfg.image_size
    info.update({"params": count_params(net), "flops_per_step": count_flops(net, size),
                 "input": [1, net.cfg.in_channels, size, size], "unet": net.cfg.to_dict(), "arch": net.cfg.arch or None})
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = describe(args)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"preset          {info['preset']}")
    if "path" in info:
        print(f"path            {info['path']}")
    print(f"params          {info['params'] / 1e6:.3f} M")
    print(f"flops_per_step  {info['flops_per_step'] / 1e9:.3f} GFLOP (batch 1, {info['input'][2]}x{info['input'][3]})")
    return 0


# ---- entry point ---------------------------------------------------------------------------
def _threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srnas", description="SR3 x2 super-resolution slimmed by hardware-aware NAS")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_evaluate, _add_upscale, _add_info):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"srnas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
