"""The latency lookup table at toy scale, on both CPU backends (real ONNX Runtime sessions)."""
import json
from pathlib import Path

import pytest
import torch

from models.config import UNetConfig
from models.unet import UNet
from search.latency import LatencyTable, ProfileConfig, check, profile
from search.supernet import derive_arch, space_config

BASE = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, attn_resolutions=(32,), image_size=64)
SPACE = {"down0.0.unit1": ["conv3x3", "dwsep3x3"], "down0.0.unit2": ["conv3x3", "skip"],
         "down1.0.attn": ["none", "self"], "width0": ["1", "0.5"], "down1.0.shortcut": "conv1x1"}
OPS = [k for k, v in SPACE.items() if isinstance(v, list) and not k.startswith("width")]


@pytest.fixture(scope="module")
def supernet():
    return UNet(space_config(BASE, SPACE)).eval()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_profile_keys_and_prediction(supernet, backend, tmp_path):
    cfg = ProfileConfig(backend=backend, batches=[1, 2], threads=1, warmup=1, reps=3, size=64, fixed_subnets=2)
    table = profile(supernet, cfg, progress=False)
    # width0 changes every slot's shapes except the attention's input (level 1 keeps its width)
    assert sorted(table.contexts) == ["width0=0.5", "width0=1"]
    assert len(table.entries) == 2 * (2 * 2 + 2 * 2 + 2)
    e = table.entries[0]
    assert set(e) >= {"slot", "candidate", "shape", "out_shape", "batch", "dtype", "backend", "version", "host",
                      "median_s"}
    assert e["backend"] == backend and e["shape"][0] in (1, 2) and e["median_s"] > 0
    for width in ("1", "0.5"):
        arch = {**derive_arch(supernet), "width0": width}
        ctx = f"width0={width}"
        expected = table.fixed[1][ctx] + sum(table.seconds(s, arch[s], 1, ctx) for s in OPS)
        assert table.predict(arch, 1) == pytest.approx(expected)
    table.save(tmp_path / "lut.json")
    again = LatencyTable.load(tmp_path / "lut.json")
    assert again.predict(arch, 2) == pytest.approx(table.predict(arch, 2))
    # a slower candidate costs more in the differentiable form too
    costs = again.slot_costs(supernet, 1)
    assert costs.per_slot["down0.0.unit2"]["width0=1"]["conv3x3"] > costs.per_slot["down0.0.unit2"]["width0=1"]["skip"]
    assert costs.expected(supernet).item() > 0
    assert costs.of_arch(arch) == pytest.approx(again.predict(arch, 1))


def test_the_search_prices_an_architecture_as_the_corrected_table_predicts(supernet):
    """A check's linear correction applies to the search's costs as well: a budget in ms means what the table's
    prediction (and deploy.json, and /metrics) mean by it."""
    cfg = ProfileConfig(backend="torch", batches=[1], threads=1, warmup=1, reps=2, size=64, fixed_subnets=2)
    table = profile(supernet, cfg, progress=False)
    table.correction[1] = (1.5, 0.002)
    costs = table.slot_costs(supernet, 1)
    for width in ("1", "0.5"):
        arch = {**derive_arch(supernet), "width0": width}
        raw = table.predict(arch, 1, corrected=False)
        assert costs.of_arch(arch) == pytest.approx(table.predict(arch, 1)) == pytest.approx(1.5 * raw + 0.002)
    argmax = derive_arch(supernet)  # the differentiable cost of the architecture the argmax extracts
    assert costs.expected(supernet, "argmax").item() == pytest.approx(table.predict(argmax, 1))


def test_check_reports_mape(supernet):
    cfg = ProfileConfig(backend="torch", batches=[1], threads=1, warmup=1, reps=3, size=64, fixed_subnets=2)
    table = profile(supernet, cfg, progress=False)
    report = check(table, supernet, cfg, n=4, progress=False)
    r = report["batches"]["1"]
    names = [x["name"] for x in r["subnets"]]
    assert names[:2] == ["base", "fastest"] and len(names) == 6  # the extremes, then the random ones
    assert all(x["measured_s"] > 0 for x in r["subnets"]) and r["mape_raw"] >= 0 and r["mape_corrected_loo"] >= 0
    fastest, base = r["subnets"][1], r["subnets"][0]
    assert fastest["predicted_s"] < base["predicted_s"]


def test_profile_cli_rejects_bad_input(run_srnas, tmp_path):
    proc = run_srnas("profile", "--backend", "torch", "--preset", "huge", "--out", tmp_path / "x.json")
    assert proc.returncode == 2 and "unknown preset" in proc.stderr and "Traceback" not in proc.stderr


def test_profile_extends_a_table_with_new_batches(supernet):
    cfg = ProfileConfig(backend="torch", batches=[1], threads=1, warmup=1, reps=2, size=64, fixed_subnets=2)
    table = profile(supernet, cfg, progress=False)
    key = lambda e: (e["slot"], e["candidate"], tuple(e["shape"][1:]))  # noqa: E731
    first = {key(e): e["median_s"] for e in table.entries}
    more = ProfileConfig(**{**cfg.__dict__, "batches": [1, 2]})
    table = profile(supernet, more, progress=False, table=table)
    assert sorted(table.fixed) == [1, 2] and len(table.entries) == 2 * len(first)
    assert all(first[key(e)] == e["median_s"] for e in table.entries if e["batch"] == 1)
    assert table.meta["extended"][0]["batches"] == [2]
    arch = derive_arch(supernet)
    assert table.predict(arch, 2, corrected=False) > 0
    with pytest.raises(ValueError, match="measured with torch"):
        profile(supernet, ProfileConfig(**{**more.__dict__, "backend": "onnxruntime", "batches": [4]}), False, table)


def test_a_view_keeps_its_own_correction_and_reads_the_timings_of_its_table(supernet, tmp_path):
    """A checked twin of a table holds only its correction; saving it (as `srnas profile --check-only` does) keeps
    it a view, and the raw table beside it is untouched. A view names a file in its own folder, never a path."""
    cfg = ProfileConfig(backend="torch", batches=[1], threads=1, warmup=1, reps=2, size=64, fixed_subnets=2)
    profile(supernet, cfg, progress=False).save(tmp_path / "raw.json")
    raw_text = (tmp_path / "raw.json").read_text()
    (tmp_path / "view.json").write_text(json.dumps({"entries_from": "raw.json"}))
    view = LatencyTable.load(tmp_path / "view.json")
    view.correction[1] = (2.0, 0.001)
    view.save(tmp_path / "view.json")
    stored = json.loads((tmp_path / "view.json").read_text())
    assert set(stored) == {"meta", "entries_from", "correction"} and (tmp_path / "raw.json").read_text() == raw_text
    again, raw = LatencyTable.load(tmp_path / "view.json"), LatencyTable.load(tmp_path / "raw.json")
    arch = derive_arch(supernet)
    assert again.predict(arch, 1, corrected=False) == raw.predict(arch, 1)
    assert again.predict(arch, 1) == pytest.approx(2.0 * raw.predict(arch, 1) + 0.001)
    for bad, message in (("../raw.json", "file name in the same folder"), ("view.json", "itself a view"),
                         (7, "file name in the same folder")):
        (tmp_path / "bad.json").write_text(json.dumps({"entries_from": bad}))
        with pytest.raises(ValueError, match=message):
            LatencyTable.load(tmp_path / "bad.json")


def test_the_shipped_checked_table_is_the_raw_table_with_its_correction():
    luts = Path(__file__).resolve().parents[1] / "search/luts"
    checked = LatencyTable.load(luts / "tiny-fold2-nonorm-default-ort-1t-epyc-checked.json")
    raw = LatencyTable.load(luts / "tiny-fold2-nonorm-default-ort-1t-epyc.json")
    report = json.loads((luts / "tiny-fold2-nonorm-default-ort-1t-epyc.check.json").read_text())
    assert checked.entries_from == "tiny-fold2-nonorm-default-ort-1t-epyc.json"
    assert checked.entries == raw.entries and checked.fixed == raw.fixed and not raw.correction
    assert checked.correction[1] == tuple(report["batches"]["1"]["correction"])
