"""The fixed-cost-per-step fit of the study's networks (bench/overhead.py)."""
import pytest

from bench import overhead


def test_the_fit_recovers_a_fixed_cost_and_a_cost_per_gflop():
    gflop = [0.1, 0.2, 0.4, 0.8]
    f = overhead.fit(gflop, [6.0 + 20.0 * g for g in gflop])
    assert f["fixed_ms"] == pytest.approx(6.0) and f["ms_per_gflop"] == pytest.approx(20.0)
    assert f["r2"] == pytest.approx(1.0) and f["n"] == 4 and (f["gflop_min"], f["gflop_max"]) == (0.1, 0.8)
    noisy = overhead.fit(gflop, [6.5, 9.5, 14.0, 22.0])
    assert 0.9 < noisy["r2"] < 1.0
    assert overhead.share_at(f, 12.0) == pytest.approx(0.5) and overhead.share_at(f, 3.0) == 1.0


def test_every_distinct_network_of_a_study_is_counted_once(tmp_path):
    from search import pareto

    cfg = pareto.load_config(pareto.ROOT / "search/recipes/pareto-tiny.yaml")
    study = pareto.Study(cfg, tmp_path / "run", pareto.ROOT / "bench" / "results" / "pareto")
    study.state["points"] = [p for p in study.state["points"] if p["name"] in (
        "t1.5x-classic-s0", "t1.5x-classic-s1", "t1.5x-searched-softmax-s1", "t1.5x-narrowed-s0")]
    rows = overhead.network_rows(study)
    assert sorted(r["family"] for r in rows) == ["classic", "unet", "unet"]  # the classic's two seeds: one network
    assert all(r["gflop"] > 0.1 and r["ms"] > 5 for r in rows)
