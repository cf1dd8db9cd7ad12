import json

import pytest
import torch

from models.checkpoint import CONFIG, WEIGHTS, CheckpointError, load_model


def test_round_trip(tiny_model_dir):
    a = load_model(tiny_model_dir)
    b = load_model(tiny_model_dir)
    assert a.preset == "tiny" and a.diffusion.cfg.prediction == "v"
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k])


def _copy(src, dst):
    dst.mkdir()
    for name in (CONFIG, WEIGHTS):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_corrupt_weights(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(d)


def test_corrupt_config(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_model(d)


def test_weights_that_do_not_fit_the_config(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((d / CONFIG).read_text())
    cfg["unet"]["base_channels"] = 32
    (d / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(d)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_model(tmp_path / "nope")


def test_weights_are_never_unpickled(tiny_model_dir):
    assert (tiny_model_dir / WEIGHTS).read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle stream
    header_len = int.from_bytes((tiny_model_dir / WEIGHTS).read_bytes()[:8], "little")
    json.loads((tiny_model_dir / WEIGHTS).read_bytes()[8:8 + header_len])  # safetensors JSON header
