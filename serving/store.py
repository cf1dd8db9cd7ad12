"""Put a model folder into the BentoML model store, where the service (and `bentoml build`) find it; with no
folder given, every shipped model this installation has, each under the tag the service looks for.

A folder that carries its `model.onnx` and its network facts (deploy.json) is stored without torch; one
that does not is exported here first, which needs the training install (torch)."""
from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from export.calibration import KIT_DIR
from export.record import network_facts
from models.spec import CONFIG, DEFAULT_MODEL_DIR, SHIPPED_MODELS, WEIGHTS, read_spec
from models.errors import UserError
from serving.config import DEFAULT_MODELS, configured_models, parse_models

COPIED = (CONFIG, WEIGHTS, "deploy.json", "model.onnx", "model.int8.onnx", "model.plan")
log = logging.getLogger("srnas.serving")


def stored_files(model_dir: Path) -> list[str]:
    """What a stored model carries: the model's own files and its calibration kit (relative paths)."""
    kit = sorted(str(p.relative_to(model_dir)) for p in (model_dir / KIT_DIR).glob("*") if p.is_file())
    return [name for name in COPIED if (model_dir / name).is_file()] + kit


def digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in stored_files(model_dir):
        h.update(name.encode())
        h.update((model_dir / name).read_bytes())
    return h.hexdigest()


def _latest_digest(name: str) -> tuple[str | None, str | None]:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        m = bentoml.models.get(f"{name}:latest")
    except NotFound:
        return None, None
    return str(m.tag), m.info.metadata.get("digest")


def import_model(model_dir: str | Path | None, name: str, export_onnx: bool = True) -> tuple[str, bool]:
    """Returns (tag, created); a model already stored with the same files is not stored again."""
    import bentoml

    src = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    spec = read_spec(src)  # refuse a broken folder before touching the store
    if not (src / WEIGHTS).is_file():
        raise UserError(f"{src}: missing {WEIGHTS}")
    complete = (src / "model.onnx").is_file() and None not in network_facts(src).values()
    want = digest(src)
    tag, have = _latest_digest(name)
    if tag and have == want:
        return tag, False
    try:
        with bentoml.models.create(name, labels={"preset": spec.preset},
                                   metadata={"digest": want, "source": str(src.resolve())}) as stored:
            out = Path(stored.path)
            for f in stored_files(src):
                (out / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / f, out / f)
            if export_onnx and not complete:
                _export(src, out)
    except ValueError as exc:  # an invalid model name
        raise UserError(f"cannot store {src} as {name!r}: {exc}") from None
    return str(stored.tag), True


def shipped_tags() -> dict[str, str]:
    """{shipped name: store name}: as SRNAS_MODELS maps it (so that `make serve` finds what it configures), else
    the shipped default mapping; without a version (the store gives each import its own)."""
    configured, default = configured_models(), parse_models(DEFAULT_MODELS)
    return {name: configured.get(name, default[name]).split(":")[0] for name in SHIPPED_MODELS}


def import_shipped(export_onnx: bool = True) -> list[tuple[str, Path, str | None, bool]]:
    """Every shipped model folder that exists, each under its tag: [(name, folder, tag or None when the folder
    is not in this installation, created)]."""
    out = []
    for name, tag in shipped_tags().items():
        folder = SHIPPED_MODELS[name]
        if (folder / CONFIG).is_file():
            out.append((name, folder, *import_model(folder, tag, export_onnx)))
        else:
            out.append((name, folder, None, False))
    return out


def is_stored(tag: str) -> bool:
    """Whether the BentoML model store has `tag` (name or name:version)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
    except NotFound:
        return False
    return True


def shipped_folder(name: str, tag: str) -> Path | None:
    """The folder of the shipped model `name` when `tag` is its shipped store tag (no version: the store names
    versions) and this installation has the folder; else None."""
    folder = SHIPPED_MODELS.get(name)
    if folder is None or tag != parse_models(DEFAULT_MODELS).get(name):
        return None
    return folder if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file() else None


def import_missing(tags: dict[str, str]) -> list[str]:
    """Import every shipped model that `tags` ({served name: store tag}) names under its shipped tag and the store
    lacks, from this installation's folder, so that a plain `bentoml serve` starts on an empty store; one INFO
    line each. A tag already in the store is left as it is (it may hold another folder, imported on purpose);
    a failed import is one warning, and the service then says which model is missing."""
    from bentoml.exceptions import BentoMLException

    imported = []
    for name, tag in tags.items():
        folder = shipped_folder(name, tag)
        if folder is None or is_stored(tag):
            continue
        try:
            stored, _ = import_model(folder, tag)
        except (UserError, OSError, ModuleNotFoundError, BentoMLException) as exc:  # e.g. a read-only store
            log.warning("could not import the shipped model %r from %s into the BentoML model store: %s",
                        name, folder, exc)
            continue
        log.info("imported the shipped model %r from %s into the BentoML model store as %s", name, folder, stored)
        imported.append(stored)
    return imported


def _export(src: Path, out: Path) -> None:
    """Export once at import, so that every server start skips it (torch: the training install)."""
    from export.backends import onnx_source
    from export.record import record_network
    from models.checkpoint import load_model

    bundle = load_model(src)
    if not (out / "model.onnx").is_file():
        (out / "model.onnx").write_bytes(onnx_source(bundle.__class__(bundle.net, bundle.diffusion, bundle.preset)))
    record_network(out, bundle.net)
