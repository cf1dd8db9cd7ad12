"""`srnas`: one command line for every offline stage."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from models.errors import UserError
from search.configfile import read_yaml
from search.objective import FORMS
from srnas.workers import run_workers

Handler = Callable[[argparse.Namespace], int]


def _numbers(kind: type, what: str) -> Callable[[str], list]:
    """An argparse type for comma-separated numbers of one kind."""
    def parse(text: str) -> list:
        try:
            vals = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}s, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"expected at least one {what}")
        return vals
    return parse


_int_list, _float_list = _numbers(int, "integer"), _numbers(float, "number")


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# ---- train, finetune, search ----------------------------------------------------------------
TRAIN_KEYS = ("preset", "iters", "batch", "patch", "lr", "ema_decay", "seed", "threads", "data", "lr_dir",
              "checkpoint_every", "teacher", "distill", "device", "val_every")
DIFFUSION_KEYS = ("prediction", "target", "residual_scale", "loss")


def _add_training_flags(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--config", help="YAML file with the run's config fields; flags override it")
    p.add_argument("--preset", help="network preset (tiny, sr3-paper)")
    p.add_argument("--iters", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--patch", type=int, help="HR crop side (default 128)")
    p.add_argument("--lr", type=float)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", help="cpu (default) or cuda; under torchrun each rank takes its LOCAL_RANK's GPU")
    p.add_argument("--data", help="'builtin' (scikit-image photos) or a DIV2K-layout HR folder")
    p.add_argument("--lr-dir", help="folder of LR images (e.g. DIV2K_train_LR_unknown/X2); default: bicubic x2")
    p.add_argument("--prediction", choices=["eps", "x0", "v"])
    p.add_argument("--target", choices=["image", "residual"])
    p.add_argument("--residual-scale", type=float)
    p.add_argument("--loss", choices=["l1", "l2"])
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--val-every", type=int, help="score the EMA weights on val every N steps (val_log.csv; 0: never)")
    p.add_argument("--teacher", help="model folder to distil from (same diffusion config), e.g. the trained base")
    p.add_argument("--distill", type=float, help="weight of the distance to the teacher's output")
    p.add_argument("--out", default=out_default, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--no-progress", action="store_true")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a UNet with the SR3 objective (EMA, checkpoints, resume)")
    _add_training_flags(p, "runs/train")
    p.set_defaults(func=cmd_train)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="continue training a model folder, e.g. an extracted subnet")
    p.add_argument("--model", required=True, help="model folder to start from (its network, weights, diffusion)")
    p.add_argument("--fresh-weights", action="store_true",
                   help="take only the folder's architecture and diffusion; train from newly initialised weights")
    _add_training_flags(p, "runs/finetune")
    p.set_defaults(func=cmd_train)


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="hardware-aware differentiable architecture search; writes arch.json + subnet/")
    _add_training_flags(p, "runs/search")
    p.add_argument("--space", help="search space (default, sr3nas)")
    p.add_argument("--relax", choices=["softmax", "temperature", "gumbel", "gumbel-hard"])
    p.add_argument("--cost", choices=["none", "flops", "latency", "both"])
    p.add_argument("--loss-form", choices=FORMS)
    p.add_argument("--lambda-flops", type=float)
    p.add_argument("--lambda-latency", type=float)
    p.add_argument("--target-flops", type=float)
    p.add_argument("--target-latency", type=float, help="seconds per step (budget form)")
    p.add_argument("--lambda-budget", type=float, help="weight of the budget penalty")
    p.add_argument("--lut", help="latency lookup table from `srnas profile`")
    p.add_argument("--warmup-alpha", type=int, help="weight-only steps before alpha moves")
    p.add_argument("--alpha-lr", type=float)
    p.add_argument("--cost-ramp", type=int, help="alpha steps over which the cost weight ramps in")
    p.add_argument("--skip-cap", type=float, help="expected share of second units on skip above which it is penalised")
    p.add_argument("--lambda-skip", type=float, help="weight of the skip penalty (0: off)")
    p.add_argument("--balance-alpha", action="store_true", default=None,
                   help="rescale the task's alpha-gradient to the target penalty's, so that lambda_budget 1 weighs "
                        "cost and task alike (budget and absolute forms)")
    p.add_argument("--score-crops", type=int, help="val crops per image for the discretization gap (0: not scored)")
    p.add_argument("--t-schedule", choices=["tanh", "linear", "exp"])
    p.add_argument("--t-max", type=float)
    p.add_argument("--t-min", type=float)
    p.set_defaults(func=cmd_search)


def _config_fields(args: argparse.Namespace) -> dict[str, Any]:
    base = read_yaml(args.config, f"{args.config}: cannot read config") if args.config else {}
    diff = dict(base.pop("diffusion", {}) or {})
    diff.update({k: getattr(args, k) for k in DIFFUSION_KEYS if getattr(args, k) is not None})
    base.update({k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k) is not None})
    if getattr(args, "model", None) and args.command == "finetune":
        from models.checkpoint import load_model

        bundle = load_model(args.model)  # fine-tuning keeps the model's diffusion unless flags change it
        diff = {**bundle.diffusion.cfg.to_dict(), **diff}
        base.update(init_model=str(args.model), preset=bundle.preset)
        if args.fresh_weights:
            base["fresh_weights"] = True
    base["diffusion"] = diff
    return base


def _check(cfg) -> None:
    from search.train import training_device

    try:
        cfg.unet_config()
        training_device(cfg.device)
    except (TypeError, KeyError, ValueError) as exc:
        raise UserError(f"invalid config: {exc}") from None
    if cfg.iters < 1 or cfg.batch < 1 or cfg.patch < 16 or cfg.patch % 16:
        raise UserError("iters and batch must be >= 1, and patch a multiple of 16")


def _train_config(args: argparse.Namespace):  # -> TrainConfig
    from search.train import TrainConfig

    try:
        cfg = TrainConfig.from_dict(_config_fields(args))
    except (TypeError, KeyError, ValueError) as exc:
        raise UserError(f"invalid training config: {exc}") from None
    _check(cfg)
    return cfg


def _run(trainer, args: argparse.Namespace) -> Path:
    if args.resume and trainer.resume():
        if trainer.step >= trainer.cfg.iters:
            print(f"{args.out}: already ran {trainer.step} iterations")
        else:
            print(f"resuming {args.out} at iteration {trainer.step}")
    return trainer.run(progress=not args.no_progress)


def cmd_train(args: argparse.Namespace) -> int:
    from search.train import Trainer

    model_dir = _run(Trainer(_train_config(args), args.out), args)
    print(f"model written to {model_dir}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from search.figures import search_plots
    from search.nas import SearchConfig, SearchTrainer

    fields = _config_fields(args)
    for key in ("space", "relax", "cost", "lut", "warmup_alpha", "alpha_lr", "cost_ramp", "skip_cap", "lambda_skip",
                "balance_alpha", "score_crops"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    loss = dict(fields.pop("cost_loss", {}) or {})
    for flag, key in (("loss_form", "form"), ("lambda_flops", "lambda_flops"), ("lambda_latency", "lambda_latency"),
                      ("target_flops", "target_flops"), ("target_latency", "target_latency"),
                      ("lambda_budget", "lambda_budget")):
        if getattr(args, flag) is not None:
            loss[key] = getattr(args, flag)
    temp = dict(fields.pop("temperature", {}) or {})
    for flag, key in (("t_schedule", "kind"), ("t_max", "t_max"), ("t_min", "t_min")):
        if getattr(args, flag) is not None:
            temp[key] = getattr(args, flag)
    try:
        cfg = SearchConfig.from_dict({**fields, "cost_loss": loss, "temperature": {"steps": 0, **temp}})
        cfg.validate()
    except (TypeError, KeyError, ValueError) as exc:
        raise UserError(f"invalid search config: {exc}") from None
    _check(cfg)
    subnet = _run(SearchTrainer(cfg, args.out), args)
    plots = search_plots(Path(args.out))
    print(f"subnet written to {subnet} (arch.json beside it); plots: {', '.join(str(p) for p in plots)}")
    record = subnet / "arch.json"  # written by rank 0 alone under torchrun
    gap = json.loads(record.read_text()).get("discretization") if record.is_file() else None
    if gap:
        print(f"discretization gap on {gap['crops']} val crops (DDIM 1 step): supernet {gap['supernet_psnr_y']:.3f} dB, "
              f"inherited subnet {gap['inherited_psnr_y']:.3f} dB, gap {gap['gap_db']:.3f} dB")
    return 0


# ---- profile -------------------------------------------------------------------------------
def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="latency lookup table: every candidate block timed on the serving backend")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="onnxruntime")
    p.add_argument("--batch", type=_int_list, default=[1], help="comma-separated batch sizes, e.g. 1,8")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--space", default="default")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (default: the CPU quota, as served)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="onnxruntime: cuda times blocks through its TensorRT/CUDA execution providers")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="runs/lut.json")
    p.add_argument("--check", action="store_true", help="then time random subnets end to end and report MAPE")
    p.add_argument("--check-only", action="store_true", help="check an existing --out table without re-profiling")
    p.add_argument("--extend", action="store_true", help="add the --batch sizes an existing --out table lacks")
    p.add_argument("--subnets", type=int, default=20, help="random subnets for --check")
    p.add_argument("--calibrate", metavar="TABLE", help="instead of profiling, map TABLE (timed on another host) onto "
                                                        "this one from about a minute of reference timings")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from models.config import PRESETS, preset
    from models.unet import UNet
    from search.latency import LatencyTable, ProfileConfig, check, profile
    from search.space import SPACES, make_space
    from search.supernet import space_config

    if args.preset not in PRESETS or args.space not in SPACES:
        raise UserError(f"unknown preset or space; presets: {', '.join(PRESETS)}; spaces: {', '.join(SPACES)}")
    if args.reps < 1 or args.subnets < 2 or min(args.batch) < 1:
        raise UserError("--reps and --batch must be >= 1 and --subnets >= 2")
    base = preset(args.preset)
    supernet = UNet(space_config(base, make_space(args.space, base))).eval()
    if args.device == "cuda" and args.backend != "onnxruntime":
        raise UserError("--device cuda times through ONNX Runtime's GPU providers: use --backend onnxruntime")
    if args.device == "cuda":
        from export.runtime import RuntimeConfig, available_providers, provider_chain

        provider_chain(RuntimeConfig(device="cuda"), available_providers())  # no GPU provider: a clear error
    cfg = ProfileConfig(args.backend, args.batch, args.threads, args.warmup, args.reps, device=args.device)
    out = Path(args.out)
    if (args.check_only or args.extend) and not out.is_file():
        raise UserError(f"{out}: no latency table to {'check' if args.check_only else 'extend'}")
    if args.calibrate and (args.check_only or args.extend):
        raise UserError("--calibrate makes a new table: it does not combine with --check-only or --extend")
    old = LatencyTable.load(out) if args.check_only or args.extend else None
    if args.check_only:
        table = old
    elif args.calibrate:
        table = _calibrated(args.calibrate, supernet, cfg, out, progress=not args.no_progress)
        cfg.batches = sorted(table.fixed)
    else:
        if old is not None:
            cfg.batches = [b for b in args.batch if b not in old.fixed]  # only these are profiled and checked
        try:
            table = profile(supernet, cfg, progress=not args.no_progress, table=old,
                            labels={"preset": args.preset, "space": args.space})
        except ValueError as exc:
            raise UserError(f"{out}: {exc}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        table.save(out)
        print(f"{len(table.entries)} entries ({args.backend} {table.meta['version']}, {table.meta['threads']} threads) "
              f"-> {out}")
    if (args.check or args.check_only) and cfg.batches:
        report = check(table, supernet, cfg, args.subnets, progress=not args.no_progress)
        table.save(out)  # with the fitted correction, where it helped
        check_path = out.with_suffix(".check.json")
        if (args.extend or args.check_only) and check_path.is_file():  # keep the other batches' reports
            report["batches"] = {**json.loads(check_path.read_text(encoding="utf-8"))["batches"], **report["batches"]}
        check_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        for b, r in report["batches"].items():
            print(f"batch {b}: MAPE {r['mape_raw']:.1f}% raw, {r['mape_corrected_loo']:.1f}% with a linear correction "
                  f"(leave-one-out) over {args.subnets} random subnets")
    return 0


def _calibrated(source: str, supernet: Any, cfg: Any, out: Path, progress: bool) -> Any:
    from search.calibrate import calibrate
    from search.latency import LatencyTable

    if not Path(source).is_file():
        raise UserError(f"{source}: no such latency table")
    try:
        table = LatencyTable.load(source)
    except Exception as exc:  # a corrupt table is the user's file, not a crash
        raise UserError(f"{source}: not a latency table ({str(exc)[:200]})") from None
    if (table.meta.get("backend"), int(table.meta.get("threads", 0))) != (cfg.backend, cfg.threads or _quota()):
        raise UserError(f"{source} was timed with {table.meta.get('backend')} at {table.meta.get('threads')} threads; "
                        f"calibrate it with the same --backend and --threads")
    try:
        new, report = calibrate(table, supernet, cfg, progress=progress)
    except KeyError as exc:
        raise UserError(f"{source} does not fit --preset/--space ({exc})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    new.save(out)
    out.with_suffix(".calibration.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{source} ({table.meta.get('host')}) calibrated to this host in {report['seconds']:.0f} s -> {out}")
    return new


def _quota() -> int:
    from export.runtime import cpu_quota

    return cpu_quota()


# ---- export --------------------------------------------------------------------------------
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model (default: the shipped one) or a preset's base UNet")
    p.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx or model.plan")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--preset", help="export a randomly initialised base UNet of this preset, for timing")
    p.add_argument("--arch", help="a searched arch.json, carried over to the --preset's network")
    p.add_argument("--dynamo", action="store_true", help="use the dynamo exporter instead of TorchScript")
    p.add_argument("--groupnorm", choices=["auto", "native", "decomposed"], default="auto",
                   help="GroupNormalization nodes (native) or the exporter's InstanceNormalization lowering; "
                        "auto: native for TensorRT, decomposed for ONNX Runtime (faster there, see BENCHMARKS.md)")
    p.add_argument("--quantize", choices=["int8"], help="ONNX Runtime static int8, calibrated on the built-in photos")
    p.add_argument("--max-batch", type=int, default=16, help="TensorRT optimisation profile: batch 1..max")
    p.set_defaults(func=cmd_export)


def _network(args: argparse.Namespace):  # -> (UNet, ModelBundle | None)
    """The base UNet of --preset (random weights), or the network of --model / the shipped model."""
    from models.checkpoint import load_model
    from models.config import PRESETS, preset
    from models.unet import UNet

    if args.preset and args.model:
        raise UserError("give --preset or --model, not both")
    if getattr(args, "arch", None) and not args.preset:
        raise UserError("--arch applies to a --preset's network")
    if args.preset:
        if args.preset not in PRESETS:
            raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(sorted(PRESETS))}")
        cfg = preset(args.preset)
        if getattr(args, "arch", None):
            cfg.arch = _transferred(args.arch, cfg)
        return UNet(cfg).eval(), None
    bundle = load_model(args.model)
    return bundle.net, bundle


def cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    from export.onnx_export import NATIVE_GN_OPSET, OPSET, export_unet

    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    if args.quantize and (args.format != "onnx" or args.preset):
        raise UserError("--quantize applies to ONNX exports of a trained model (calibration runs it)")
    if args.format == "tensorrt":
        from export.tensorrt import EngineConfig, build_engine, require_tensorrt

        require_tensorrt()  # fail before the export work when TensorRT or the GPU is missing
    net, bundle = _network(args)
    groupnorm = args.groupnorm if args.groupnorm != "auto" else "native" if args.format == "tensorrt" else "decomposed"
    if args.dynamo and groupnorm == "native":
        raise UserError("native GroupNormalization comes from the TorchScript exporter; drop --dynamo")
    opset = NATIVE_GN_OPSET if groupnorm == "native" else OPSET
    if args.format == "tensorrt":
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = export_unet(net, Path(tmp) / "model.onnx", groupnorm=groupnorm)
            build_engine(onnx_file, out, EngineConfig(max_batch=args.max_batch, opt_batch=min(8, args.max_batch)))
        print(f"{out} (TensorRT fp16 engine, batch 1..{args.max_batch}, from ONNX opset {opset})")
        return 0
    if args.quantize:
        from export.quantize import CalibrationConfig, quantize_int8
        from search.data import calibration_crops

        crops = calibration_crops(CalibrationConfig.crops, CalibrationConfig.seed)
        with tempfile.TemporaryDirectory() as tmp:
            quantize_int8(export_unet(net, Path(tmp) / "fp32.onnx"), out, bundle, crops)
        print(f"{out} (int8 QDQ, calibrated on the built-in training photos; passes onnx.checker)")
        return 0
    export_unet(net, out, dynamo=args.dynamo, groupnorm=groupnorm)
    print(f"{out} (opset {opset}, {groupnorm} GroupNorm, dynamic batch, passes onnx.checker)")
    return 0


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="make a model folder ready to serve: model.onnx, int8 variant, deploy.json")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--lut", default=None, help="latency table for the search-time prediction "
                                                "(default: the shipped one for the model's preset; "
                                                "'none' to skip)")
    p.add_argument("--int8", action="store_true", help="also build model.int8.onnx and measure its PSNR cost")
    p.add_argument("--crops", type=int, default=4, help="validation crops per image for the variant's PSNR")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    from srnas.deploy import DeployConfig, default_lut, deploy

    lut = None if args.lut == "none" else args.lut or default_lut(args.model)
    if lut and not Path(lut).is_file():
        raise UserError(f"{lut}: no such latency table")
    if args.crops < 1:
        raise UserError("--crops must be >= 1")
    rec = deploy(args.model, DeployConfig(lut, args.int8, args.crops, args.threads))
    print(json.dumps(rec, indent=2))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="per-step latency, images/s and GFLOP/s of models on every available backend")
    p.add_argument("models", nargs="*", metavar="NAME=MODEL_DIR",
                   help="default: base=models/weights/base-tiny default=models/weights/default")
    p.add_argument("--batches", type=_int_list, default=[1, 4, 8, 16])
    p.add_argument("--backends", type=_str_list, help="default: all that can run here")
    p.add_argument("--reps", type=int, default=20, help="timed runs per median: each backend and batch, each level")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="bench/results/bench.json")
    p.add_argument("--markdown", help="write the report's section into this file (e.g. BENCHMARKS.md)")
    p.add_argument("--record", action="store_true", help="write the measurements into each model's deploy.json")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.report import markdown, write_section
    from bench.run import BenchConfig, record_measured, run, save
    from bench.timing import CPU_BACKENDS, GPU_BACKENDS

    root = Path(__file__).resolve().parents[1] / "models" / "weights"
    pairs = _name_dirs(args.models, "models", must_exist=True) or [("base", str(root / "base-tiny")),
                                                                   ("default", str(root / "default"))]
    known = (*CPU_BACKENDS, *GPU_BACKENDS)
    if args.backends and any(b not in known for b in args.backends):
        raise UserError(f"unknown backend; choose from {', '.join(known)}")
    if args.reps < 1 or min(args.batches) < 1:
        raise UserError("--reps and --batches must be >= 1")
    cfg = BenchConfig(dict(pairs), args.batches, args.backends or list(known), args.threads, args.reps)
    report = run(cfg, progress=not args.no_progress)
    print(f"results -> {save(report, args.out)}")
    if args.record:
        record_measured(report)
    section = markdown(report)
    if args.markdown:
        write_section(args.markdown, section)
    print(section, end="")
    return 0


# ---- evaluate ------------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="PSNR/SSIM(Y) against HR and bicubic, with figures")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--data", default="builtin")
    p.add_argument("--lr-dir")
    p.add_argument("--split", default="val", choices=["val", "test"], help="val (selection) or test (reporting)")
    p.add_argument("--steps", type=_int_list, default=[10, 20, 50], help="comma-separated, e.g. 10,20,50")
    p.add_argument("--samplers", type=_str_list, default=["ddim", "ddpm"])
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--crops", type=int, default=8, help="validation crops per image")
    p.add_argument("--lr-jpeg", type=int, default=0, metavar="QUALITY",
                   help="JPEG-compress each LR image at this quality (1-100) first, as photos arrive (0: off)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trajectory-steps", type=int,
                   help="steps of the path that trajectory.png follows, at least the best setting's (default: 20)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where the network runs: cpu or cuda")
    p.add_argument("--out", default="runs/eval", help="folder for metrics.json, grid.png, trajectory.png")
    p.add_argument("--choose-defaults", action="store_true",
                   help="write the fewest-step setting within 0.05 dB of the best into the model's config.json")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.checkpoint import load_model
    from models.sampler import SamplerConfig
    from search.evaluate import EvalConfig, evaluate
    from search.train import training_device

    _threads(args.threads)
    device = training_device(args.device)  # a UserError: one clear line, exit 2
    bundle = load_model(args.model)
    bundle.net.to(device)
    for s in args.samplers:
        for k in args.steps:
            SamplerConfig(s, k, args.eta).validate(bundle.diffusion.schedule.T)
    if args.crops < 1 or args.batch < 1 or (args.trajectory_steps is not None and args.trajectory_steps < 1):
        raise UserError("--crops, --batch and --trajectory-steps must be >= 1")
    if not 0 <= args.lr_jpeg <= 100:
        raise UserError("--lr-jpeg must be a JPEG quality in 1..100 (0: off)")
    cfg = EvalConfig(args.data, args.lr_dir, args.steps, args.samplers, args.crops, args.batch, args.seed, args.eta,
                     split=args.split, lr_jpeg=args.lr_jpeg)
    if args.trajectory_steps is not None:
        cfg.trajectory_steps = args.trajectory_steps
    report = evaluate(bundle, cfg, args.out, progress=not args.no_progress)
    from search.evaluate import quality_table

    jpeg = f", LR as JPEG quality {args.lr_jpeg}" if args.lr_jpeg else ""
    print(f"{report['crops']} {args.split} crops of {', '.join(report['images'])}{jpeg}; mean ± std over crops")
    print(quality_table(report))
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
    from srnas.upscale import add_arguments

    p = sub.add_parser("upscale", help="x2 super-resolve images (files, folders, glob patterns) of any size")
    add_arguments(p)
    p.set_defaults(func=cmd_upscale)


def cmd_upscale(args: argparse.Namespace) -> int:
    from srnas.upscale import run

    return run(args)


# ---- info ----------------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a preset or a model: params, FLOPs per step, files")
    p.add_argument("--preset", help="describe a randomly initialised base UNet of this preset")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--arch", help="a searched arch.json, carried over to the --preset's network")
    p.add_argument("--latency", type=int, default=0, metavar="N",
                   help="also time N runs in ONNX Runtime (batch 1) and report the median")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def _transferred(path: str, cfg) -> dict[str, str]:
    """A searched arch.json's choices carried over to the preset's network."""
    from search.space import transfer_arch

    try:
        choices = json.loads(Path(path).read_text(encoding="utf-8"))["choices"]
        if not isinstance(choices, dict) or not all(isinstance(v, str) for v in choices.values()):
            raise ValueError("choices must map slots to operator names")
        return transfer_arch(choices, cfg)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a searched arch.json ({exc})") from None


def describe(args: argparse.Namespace) -> dict[str, Any]:
    from search.costs import count_flops, count_params

    net, bundle = _network(args)
    if bundle is None:
        info: dict[str, Any] = {"preset": args.preset}
    else:
        info = {"preset": bundle.preset, "path": str(bundle.path), "defaults": bundle.defaults,
                "diffusion": bundle.diffusion.cfg.to_dict(), "train_steps": bundle.meta.get("train_steps")}
    size = net.cfg.image_size
    info.update({"params": count_params(net), "flops_per_step": count_flops(net, size),
                 "input": [1, net.cfg.in_channels, size, size], "unet": net.cfg.to_dict(), "arch": net.cfg.arch or None})
    if args.latency:
        from search.latency import ProfileConfig, make_timer, time_network

        timer = make_timer(ProfileConfig("onnxruntime", [1], warmup=3, reps=args.latency))
        info["latency_s"] = {"backend": "onnxruntime", "batch": 1, "median_of": args.latency,
                             "seconds": time_network(net, 1, timer, size)}
    return info


def cmd_info(args: argparse.Namespace) -> int:
    if args.latency < 0:
        raise UserError("--latency takes a number of timed runs (0 = none)")
    info = describe(args)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"preset          {info['preset']}")
    if "path" in info:
        print(f"path            {info['path']}")
    print(f"params          {info['params'] / 1e6:.3f} M")
    print(f"flops_per_step  {info['flops_per_step'] / 1e9:.3f} GFLOP (batch 1, {info['input'][2]}x{info['input'][3]})")
    if "latency_s" in info:
        print(f"latency         {info['latency_s']['seconds'] * 1e3:.2f} ms per step (ONNX Runtime, batch 1, median)")
    return 0


# ---- compare -------------------------------------------------------------------------------
def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the comparison table: FLOPs, ONNX Runtime latency, PSNR/SSIM per model")
    p.add_argument("models", nargs="+", metavar="NAME=MODEL_DIR", help="the first one is the reference for ratios")
    p.add_argument("--out", default="runs/compare", help="folder for compare.md and compare.json")
    p.add_argument("--reps", type=int, default=30, help="timed runs per model (median)")
    p.add_argument("--crops", type=int, default=8, help="validation crops per image")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from models.checkpoint import load_model
    from srnas.compare import measure, measure_latency, write
    from search.evaluate import EvalConfig
    from search.latency import ProfileConfig

    pairs = _name_dirs(args.models, "models", must_exist=True)
    if args.reps < 1 or args.crops < 1:
        raise UserError("--reps and --crops must be >= 1")
    _threads(args.threads)
    bundles = [(name, load_model(path)) for name, path in pairs]  # fail on a bad folder before measuring
    timing = ProfileConfig("onnxruntime", [1], args.threads, warmup=5, reps=args.reps)
    evaluation = EvalConfig(crops_per_image=args.crops)
    # every latency first, on a quiet process: torch's worker threads linger busily after its own work
    timings = [measure_latency(bundle, timing) for _, bundle in bundles]
    rows = [measure(name, bundle, t, evaluation, progress=not args.no_progress)
            for (name, bundle), t in zip(bundles, timings)]
    path = write(rows, Path(args.out))
    print(path.read_text(encoding="utf-8"), end="")
    return 0


# ---- store-import (serving) ----------------------------------------------------------------
def _add_store_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store-import", help="put the shipped models (or one model folder) into the BentoML model "
                                            "store for `bentoml serve`")
    p.add_argument("--model", help="model folder (default: every shipped model, each under its SRNAS_MODELS tag)")
    p.add_argument("--name", help="store name of --model (default: the default model's, srnas-default)")
    p.add_argument("--no-onnx", action="store_true", help="do not pre-export model.onnx into the store")
    p.set_defaults(func=cmd_store_import)


def cmd_store_import(args: argparse.Namespace) -> int:
    from serving.store import import_model, import_shipped, shipped_tags

    if args.model or args.name:  # one folder (the shipped default when only --name is given), as named
        imported = [import_model(args.model, args.name or shipped_tags()["default"], export_onnx=not args.no_onnx)]
    else:
        imported = []
        for name, folder, tag, created in import_shipped(export_onnx=not args.no_onnx):
            if tag is None:  # not every installation has every shipped model; the service says so if it needs it
                print(f"srnas store-import: shipped model {name!r} skipped: {folder} is not in this installation",
                      file=sys.stderr)
            else:
                imported.append((tag, created))
    for tag, created in imported:
        print(f"{'stored' if created else 'already in the store:'} {tag}")
    return 0


# ---- bento (serving) -----------------------------------------------------------------------
def _add_bento(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bento", help="build the bento from pyproject.toml (--gpu: ONNX Runtime GPU, CUDA image)")
    p.add_argument("--gpu", action="store_true", help="onnxruntime-gpu in place of onnxruntime, a CUDA base image")
    p.set_defaults(func=cmd_bento)


def cmd_bento(args: argparse.Namespace) -> int:
    from srnas.bento import build

    print(build(gpu=args.gpu))
    return 0


# ---- pipeline ------------------------------------------------------------------------------
def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="every stage in order: base, search per relaxation, fine-tune, evaluate, "
                                        "export, compare, bench, report; resumes where it stopped")
    p.add_argument("--preset", default="tiny", help="uses search/recipes/{PRESET,search-PRESET,finetune-PRESET}.yaml")
    p.add_argument("--out", default="runs/pipeline", help="run folder (one per preset and settings)")
    p.add_argument("--relax", type=_str_list, default=["softmax", "temperature", "gumbel-hard"])
    p.add_argument("--steps", type=_int_list, help="step counts to evaluate (default 1,2,4,8; 1,2 if --quick)")
    p.add_argument("--samplers", type=_str_list, default=["ddim", "ddpm"])
    p.add_argument("--data", default="builtin", help="'builtin' or a DIV2K-layout HR folder")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where training stages run: cpu or cuda")
    p.add_argument("--markdown", help="file for the report section (default: BENCHMARKS.md; OUT/report.md if --quick)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the chain in a few minutes")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars inside the stages (there are none off a terminal)")
    p.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from srnas.pipeline import RELAXATIONS, PipelineConfig, run

    if any(r not in RELAXATIONS + ("gumbel",) for r in args.relax) or not args.relax:
        raise UserError(f"--relax takes a comma-separated subset of {', '.join(RELAXATIONS + ('gumbel',))}")
    args.steps = args.steps or ([1, 2] if args.quick else [1, 2, 4, 8])
    if any(s not in ("ddim", "ddpm") for s in args.samplers) or min(args.steps) < 1:
        raise UserError("--samplers takes ddim and/or ddpm, and --steps positive integers")
    cfg = PipelineConfig(args.preset, args.out, args.relax, args.steps, args.samplers, args.data, args.threads,
                         args.device, args.quick, args.markdown, progress=not args.no_progress and sys.stderr.isatty())
    # every stage's start and end as a line at once, also where stdout is a file or a pipe (| tee)
    report = run(cfg, main, log=lambda line: print(line, flush=True))
    print(f"report written to {report}")
    return 0


# ---- pareto --------------------------------------------------------------------------------
def _add_pareto(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pareto", help="the Pareto study: searched subnets against baselines at matched latency and "
                                      "equal training budget; resumes from its results folder")
    p.add_argument("--config", default="search/recipes/pareto-tiny.yaml", help="the study's settings (YAML)")
    p.add_argument("--out", default="runs/pareto", help="run folder (training runs and checkpoints)")
    p.add_argument("--results", help="results folder: pareto.json, plot, best models "
                                     "(default bench/results/pareto; OUT/results if --quick)")
    p.add_argument("--markdown", help="file for the report section (default BENCHMARKS.md; OUT/report.md if --quick)")
    p.add_argument("--relax", type=_str_list, help="relaxations to search with (default: the config's)")
    p.add_argument("--targets", type=_float_list, help="latency targets, multiples of the floor (default: the config's)")
    p.add_argument("--lut", help="latency table of the serving configuration (default: the config's)")
    p.add_argument("--data", help="'builtin' or a folder with train/val/test subfolders (default: the config's)")
    p.add_argument("--threads", type=int, help="torch threads for training (default: the config's; workers x "
                                                "threads at most the CPUs is fastest)")
    p.add_argument("--commit", action="store_true", help="commit the results folder with git after every point")
    p.add_argument("--report-only", action="store_true", help="rewrite the plot and the report from pareto.json")
    p.add_argument("--retime-floor", action="store_true", help="time the floor again (on a quiet machine) and rescale "
                                                               "every figure, then rewrite the report")
    p.add_argument("--retime", action="store_true", help="time the floor and every finished point again (on a quiet "
                                                         "machine; networks rebuilt from pareto.json, no run folder "
                                                         "needed), then rewrite the report")
    p.add_argument("--rescore", action="store_true", help="score every finished point again from the run folder "
                                                          "(after a change to the scoring crops), then rewrite the report")
    p.add_argument("--place", action="append", metavar="NAME=DIR", help="score and time a model folder that is not "
                   "one of the study's points (e.g. the shipped default) on the study's crops and floor, and mark it "
                   "on the plot; repeatable")
    p.add_argument("--budget-check", type=float, metavar="SIZE", help="at the classic network of this target (e.g. "
                   "1.5), train the searched network chosen there and the classic one from fresh weights for "
                   "--budget-iters iterations, every baseline seed, and report whether the standing holds")
    p.add_argument("--budget-iters", type=int, default=3000, help="iterations of the budget check (default 3000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the plan (each trains with "
                                                          "--threads torch threads; 2 workers x 1 thread suit 2 cores)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set by --workers: claims points, no report
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the plumbing in a few minutes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_pareto)


def cmd_pareto(args: argparse.Namespace) -> int:
    from search import pareto, pareto_report
    from search.pareto_budget import BudgetCheck
    from srnas.deploy import shown_path

    given = {"relaxations": args.relax, "targets": args.targets, "lut": args.lut, "data": args.data,
             "train_threads": args.threads}
    cfg = pareto.load_config(args.config, **{**(pareto.QUICK if args.quick else {}),
                                             **{k: v for k, v in given.items() if v is not None}})
    pareto.validate(cfg)
    places = _name_dirs(args.place, "--place")
    upkeep = (args.report_only or args.retime_floor or args.retime or args.rescore or args.place
              or args.budget_check is not None)  # no new points of the study
    if args.workers < 1 or (args.workers > 1 and upkeep and args.budget_check is None):
        raise UserError("--workers takes a positive number, and more than 1 only to run the study or a budget check")
    out = Path(args.out)
    results = Path(args.results or (out / "results" if args.quick else pareto.ROOT / "bench" / "results" / "pareto"))
    markdown = Path(args.markdown or (out / "report.md" if args.quick else pareto.ROOT / "BENCHMARKS.md"))
    study = pareto.Study(cfg, out, results, commit=args.commit)
    if args.retime_floor:
        print(f"floor: {study.retime_floor():.2f} ms/step")
    if args.retime:
        print(f"{study.retime()} points re-timed")
    if args.rescore:
        print(f"{study.rescore()} points rescored")
    for name, folder in places:
        row = study.place(name, folder)
        print(f"{name}: test PSNR(Y) {row['psnr_test']:.3f} dB, {row['measured_ms']:.2f} ms/step")
    check = BudgetCheck(study, args.budget_check, args.budget_iters) if args.budget_check is not None else None
    if check is not None and args.workers == 1:
        print(f"{check.run()} budget-check rows trained")
    if args.workers > 1:
        if _pareto_workers(args, results, markdown):
            raise UserError("a worker process failed; rerun the same command to resume")
        with study.locked():
            pass  # read back what the workers saved
    elif not upkeep:
        study.run(progress=not args.no_progress)
    if args.worker:
        return 0  # the parent writes the report once every worker is done
    figure = pareto_report.plot(study.state, results / "pareto.png")
    rel = os.path.relpath(figure, markdown.parent) if figure else None
    pareto_report.write_section(markdown, pareto_report.markdown(study.state, rel, len(pareto.plan(cfg)),
                                                                 shown_path(study.state_path)))
    print(f"{len(study.state['points'])} points in {results / 'pareto.json'}; report in {markdown}")
    return 0


def _name_dirs(items: list[str] | None, what: str, must_exist: bool = False) -> list[tuple[str, str]]:
    """NAME=MODEL_DIR arguments (bench, compare, pareto --place) as (name, folder) pairs."""
    pairs = []
    for item in items or []:
        name, sep, folder = item.partition("=")
        if not (name and sep and folder):
            raise UserError(f"{what}: give NAME=MODEL_DIR (got {item!r})")
        if must_exist and not Path(folder).is_dir():
            raise UserError(f"no model folder {folder!r} for {name!r}")
        pairs.append((name, folder))
    return pairs


def _pareto_workers(args: argparse.Namespace, results: Path, markdown: Path) -> int:
    """Run the plan in `args.workers` processes of this command, each claiming the next point left; return how many
    failed."""
    same = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
            if name in ("config", "out", "lut", "data", "threads") and value is not None]
    same += [f"--relax={','.join(args.relax)}"] if args.relax else []
    same += [f"--targets={','.join(f'{t:g}' for t in args.targets)}"] if args.targets else []
    same += [f"--budget-check={args.budget_check:g}", f"--budget-iters={args.budget_iters}"] \
        if args.budget_check is not None else []
    same += [f"--results={results}", f"--markdown={markdown}", "--no-progress"]
    same += [flag for flag, on in (("--commit", args.commit), ("--quick", args.quick)) if on]
    return run_workers([sys.executable, "-m", "srnas.cli", "pareto", *same, "--worker"], args.workers)


# ---- ablate --------------------------------------------------------------------------------
def _add_ablate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="quality-recipe ablation: one factor of the training recipe changed per run, "
                                      "scored at few steps; writes the table into BENCHMARKS.md")
    p.add_argument("--config", default="search/recipes/ablation-tiny.yaml", help="recipe, budget and variants")
    p.add_argument("--out", help="run folder (default: the config's, runs/ablation)")
    p.add_argument("--variants", type=_str_list, help="only these variants (the recipe always runs: the reference)")
    p.add_argument("--markdown", help="file for the table (default: BENCHMARKS.md; OUT/ablation.md if --quick)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the plumbing in seconds")
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args: argparse.Namespace) -> int:
    from srnas.ablation import AblationConfig, run, with_variants

    cfg = with_variants(AblationConfig.load(args.config, out=args.out, markdown=args.markdown,
                                            quick=args.quick or None), args.variants)
    path, rows = run(cfg)
    print(f"{len(rows)} rows; table written to {path}")
    return 0


# ---- entry point ---------------------------------------------------------------------------
def _threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


# packages of the [train] extra (pyproject.toml) that the base, serving-only install lacks
TRAIN_ONLY = ("torch", "safetensors", "onnx", "onnxscript", "skimage", "matplotlib")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srnas", description="SR3 x2 super-resolution slimmed by hardware-aware NAS")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_search, _add_finetune, _add_profile, _add_export, _add_evaluate, _add_upscale,
                _add_info, _add_compare, _add_store_import, _add_bento, _add_deploy, _add_bench, _add_pipeline, _add_ablate, _add_pareto):
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
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in TRAIN_ONLY:  # the serving install has none of them
            print(f"srnas {args.command}: error: needs the training install ({exc.name} is missing): "
                  "pip install -c constraints.txt \".[train]\"", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
