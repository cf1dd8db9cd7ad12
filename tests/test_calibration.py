"""Mapping a latency table onto another host: the fit on synthetic timings, the table it makes on a toy
supernet (real timings, no timing assertions), the CLI's refusals, and the shipped tables' stored checks."""
import json
from pathlib import Path

import pytest

from export.calibration import ANY, REST, Calibration, fit, mape, pick_blocks
from search.calibrate import CalibrateConfig, calibrate
from search.latency import LatencyTable, ProfileConfig, check_archs, profile
from models.unet import UNet
from search.supernet import space_config
from tests.test_latency import BASE, SPACE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def supernet():
    return UNet(space_config(BASE, SPACE)).eval()


FACTORS = {"conv3x3": 0.4, "dwsep3x3": 0.3, REST: 0.5}  # another host: convolutions and the rest at their own speed


def test_fit_recovers_per_candidate_and_rest_scales_from_synthetic_timings():
    blocks = [(name, b, t, t * FACTORS[name]) for name in ("conv3x3", "dwsep3x3") for b in (1, 8)
              for t in (1e-3 * b, 2e-3 * b, 5e-3 * b)]
    nets = []
    for b in (1, 8):
        for parts in ({"conv3x3": 0.02 * b, "dwsep3x3": 0.01 * b, REST: 0.03 * b},
                      {"conv3x3": 0.005 * b, "skip": 0.001 * b, REST: 0.03 * b}):
            # the skip has no reference block: it runs at the geometric mean of every reference's scale
            any_scale = (0.4 * 0.3) ** 0.5
            nets.append((b, parts, sum(t * FACTORS.get(p, any_scale) for p, t in parts.items())))
    cal = fit(blocks, nets)
    for b in (1, 8):
        assert cal.scale(b, "conv3x3") == pytest.approx(0.4) and cal.scale(b, "dwsep3x3") == pytest.approx(0.3)
        assert cal.scale(b, REST) == pytest.approx(0.5) and cal.scale(b, "ibn2") == pytest.approx(cal.scales[b][ANY])
        assert mape([cal.predict(p, bb) for bb, p, _ in nets if bb == b], [m for bb, _, m in nets if bb == b]) \
            == pytest.approx(0, abs=1e-9)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))).scale(8, REST) == pytest.approx(0.5, abs=1e-5)


def test_fit_keeps_the_rest_positive_and_refuses_nothing_to_fit():
    blocks = [("conv3x3", 1, 1e-3, 2e-3)]
    cal = fit(blocks, [(1, {"conv3x3": 0.01, REST: 0.01}, 0.005)])  # the blocks alone already overshoot
    assert cal.scale(1, REST) == pytest.approx(0.1 * 2.0)
    with pytest.raises(ValueError, match="no reference timing"):
        fit([], [])


def test_reference_blocks_are_quantiles_of_each_candidate():
    entries = [{"slot": f"s{i}", "candidate": c, "shape": [1, 4], "batch": b, "median_s": (i + 1) * 1e-3}
               for c in ("conv3x3", "skip") for i in range(9) for b in (1, 2)]
    picked = pick_blocks(entries, 3)
    assert [(e["candidate"], e["slot"]) for e in picked] == [
        ("conv3x3", "s2"), ("conv3x3", "s4"), ("conv3x3", "s6"), ("skip", "s2"), ("skip", "s4"), ("skip", "s6")]
    assert all(e["batch"] == 1 for e in picked)


def test_calibrated_table_scales_every_entry_by_its_fitted_scale(supernet):
    cfg = ProfileConfig(backend="torch", batches=[1, 2], threads=1, warmup=1, reps=2, size=64, fixed_subnets=2)
    source = profile(supernet, cfg, progress=False)
    source.meta["host"] = "elsewhere"
    new, report = calibrate(source, supernet, cfg, CalibrateConfig(per_candidate=1, nets=2, warmup=0, reps=1,
                                                                   rounds=1), progress=False)
    assert new.meta["host"] != "elsewhere" and new.meta["calibrated"]["from_host"] == "elsewhere"
    assert new.meta["calibrated"]["reference_nets"] == 2 and report["seconds"] > 0
    cal = Calibration.from_dict(report["fit"])
    for old, e in zip(source.entries, new.entries):
        assert e["median_s"] == pytest.approx(old["median_s"] * cal.scale(e["batch"], e["candidate"]), rel=1e-4)
    arch = check_archs(source, supernet, [2], 1)[2][0][1]
    assert new.predict(arch, 2) == pytest.approx(cal.predict(source.parts(arch, 2), 2), rel=1e-4)
    # the blocks timed are one per candidate at each batch; the nets, each at each batch
    assert len(report["blocks"]) == 2 * len({e["candidate"] for e in source.entries})
    assert len(report["nets"]) == 2 * 2


def test_a_second_kit_of_one_table_reuses_the_references_exported_for_the_first(supernet, tmp_path, monkeypatch):
    import export.onnx_export
    from search.calibrate import write_kit

    table = profile(supernet, ProfileConfig(backend="torch", batches=[1], threads=1, warmup=0, reps=1, size=64,
                                            fixed_subnets=1), progress=False)
    cfg = CalibrateConfig(per_candidate=1, nets=1)
    first = write_kit(tmp_path / "a", table, "toy.json", supernet, cfg, size=64)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(export.onnx_export, "to_onnx", no_export)
    second = write_kit(tmp_path / "b", table, "toy.json", supernet, cfg, size=64)
    assert second == first and first["blocks"] and first["nets"]
    for r in first["blocks"] + first["nets"]:
        assert (tmp_path / "b/calibration" / r["file"]).read_bytes() == (tmp_path / "a/calibration" / r["file"]).read_bytes()
    # another table (other timings, another creation) exports its own references
    with pytest.raises(AssertionError, match="exported again"):
        later = LatencyTable({**table.meta, "created": "later"}, table.entries, table.contexts, table.fixed)
        write_kit(tmp_path / "c", later, "toy.json", supernet, cfg, size=64)


@pytest.mark.parametrize("lut", ["tiny-default-ort-1t.json", "tiny-default-ort-1t-epyc.json"])
def test_stored_checks_name_the_networks_this_code_draws(lut):
    # The leave-one-host-out bench scores other predictors on a table's stored check: that needs the same networks.
    from models.config import preset
    from search.space import make_space

    base = preset("tiny")
    net = UNet(space_config(base, make_space("default", base)))
    table = LatencyTable.load(ROOT / "search/luts" / lut)
    stored = json.loads((ROOT / "search/luts" / lut.replace(".json", ".check.json")).read_text())
    batches = sorted(int(b) for b in stored["batches"])  # the random subnets run on from batch to batch
    for b, archs in check_archs(table, net, batches, stored["subnets"]).items():
        rows = stored["batches"][str(b)]["subnets"]
        assert [r["name"] for r in rows] == [n for n, _ in archs]
        assert [r["predicted_s"] for r in rows] == pytest.approx([table.predict(a, b, corrected=False) for _, a in archs])


@pytest.mark.parametrize("args, message", [
    (["--calibrate", "search/luts/none.json"], "no such latency table"),
    (["--calibrate", "search/luts/tiny-default-ort-1t.json", "--threads", "2"], "calibrate it with the same"),
    (["--calibrate", "search/luts/tiny-default-ort-1t.json", "--check-only"], "does not combine"),
])
def test_calibrate_cli_refuses_bad_input(run_srnas, tmp_path, args, message):
    out = tmp_path / "lut.json"
    if "--check-only" in args:
        out.write_text("{}")
    r = run_srnas("profile", "--out", str(out), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_the_network_wise_predictor_learns_log_latency_from_architecture_features(supernet):
    import numpy as np
    import torch

    from search.predictor import Featurizer, RidgePredictor, cross_validated
    from search.supernet import random_arch

    feat = Featurizer.of(supernet)
    assert feat.candidates == sorted({"conv3x3", "dwsep3x3", "skip", "none", "self"}) and feat.widths == ["width0"]
    rng = torch.Generator().manual_seed(0)
    archs = [random_arch(supernet, rng) for _ in range(12)]
    x = np.stack([feat(a, supernet) for a in archs])
    assert x.shape == (12, 1 + len(feat.candidates) + 1) and np.all(x[:, 0] > 0)  # log FLOPs, counts, width
    # seconds that follow the features exactly (log-linear) are learned back within the ridge's shrinkage
    truth = np.exp(-6 + 0.8 * (x[:, 0] - x[:, 0].mean()) + 0.05 * x[:, 1])
    model = RidgePredictor(alpha=1e-6).fit(x, truth)
    assert np.allclose(model.predict(x), truth, rtol=1e-3)
    assert cross_validated(x, truth, folds=3, alpha=1e-6).shape == (12,)
