"""The Pareto study: its plan, its refusals, its report, and one --quick run end to end."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.checkpoint import load_model
from models.classic import is_classic, load_classic
from search import pareto, pareto_report
from tests.conftest import srnas_cmd
from search.pareto import StudyConfig, plan

ROOT = Path(__file__).resolve().parents[1]


def test_plan_runs_every_kind_at_every_target_with_the_first_seed_first():
    cfg = StudyConfig()
    points = plan(cfg)
    names = [p.name for p in points]
    assert len(names) == len(set(names))
    assert [p.kind for p in points[:3]] == ["floor"] * 3
    per_target = len(cfg.relaxations) * len(cfg.seeds) + 2 * len(cfg.baseline_seeds) + cfg.random_archs
    assert len(points) == 3 + 4 * per_target + len(cfg.seeds)  # temperature at one target
    for t in cfg.targets:
        mine = [p for p in points if p.target == t]
        kinds = [p.kind for p in mine]
        assert {"searched", "random", "narrowed", "classic"} <= set(kinds)
        first_rest = kinds.index("random") + cfg.random_archs  # every kind's first seed before any second seed
        assert all(p.seed == cfg.seeds[0] for p in mine[:first_rest] if p.kind != "random")
    searched = [p for p in points if p.kind == "searched"]
    assert {p.relax for p in searched if p.target == 2.0} == {"softmax", "gumbel-hard", "temperature"}
    assert {p.relax for p in searched if p.target == 1.25} == {"softmax", "gumbel-hard"}


@pytest.mark.parametrize("args, message", [
    (["--relax", "softmax,annealing"], "unknown relaxation annealing"),
    (["--targets", "0.8,2"], "must be above 1"),
    (["--lut", "search/luts/none.json"], "no such latency table"),
    (["--lut", "search/luts/tiny-default-ort.json"], "timed with 2 runtime threads"),
    (["--workers", "0"], "--workers takes a positive number"),
    (["--workers", "2", "--rescore"], "more than 1 only to run the study"),
    (["--place", "default"], "--place: give NAME=MODEL_DIR"),
    (["--place", "../x=models/weights/default"], "must be letters, digits"),
    (["--place", "d=no/such/folder"], "not a model folder"),
    (["--place", "d=models/weights/default"], "no floor timed yet"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(run_srnas, tmp_path, args, message):
    results = tmp_path / "results"
    r = run_srnas("pareto", "--out", str(tmp_path / "run"), "--results", str(results), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not results.exists() and not (tmp_path / "run").exists()


def test_tries_add_searches_after_the_study_and_keep_its_results_valid(tmp_path):
    cfg = StudyConfig()
    tried = StudyConfig(tries={"absolute": {"relaxations": ["softmax"], "targets": [2.0, 3.0],
                                            "search": {"cost_loss": {"form": "absolute"}, "alpha_lr": 0.003}}})
    before, after = plan(cfg), plan(tried)
    assert [p.name for p in after[:len(before)]] == [p.name for p in before]  # the study's order is untouched
    extra = after[len(before):]
    assert [p.name for p in extra] == [f"t{t:g}x-searched-softmax+absolute-s{s}" for t in (2, 3) for s in (0, 1, 2)]
    assert {p.label for p in extra} == {"softmax+absolute"} and tried.fingerprint() == cfg.fingerprint()
    pareto.validate(tried)
    study = pareto.Study(tried, tmp_path / "run", tmp_path / "results")
    scfg = study.search_cfg("softmax", 0, 0.01, "absolute")
    assert scfg.cost_loss.form == "absolute" and scfg.cost_loss.target_latency == 0.01 and scfg.alpha_lr == 0.003
    plain = study.search_cfg("softmax", 0, 0.01)
    assert plain.cost_loss.form == "budget" and plain.alpha_lr != 0.003


def test_the_studys_search_overrides_change_single_fields_of_nested_settings(tmp_path):
    recipe = tmp_path / "search.yaml"
    recipe.write_text((ROOT / "search/recipes/search-tiny.yaml").read_text().replace("t_max: 20.0", "t_max: 10.0"))
    cfg = StudyConfig(search_recipe=str(recipe), search={"temperature": {"t_min": 0.05},
                                                         "cost_loss": {"form": "absolute", "lambda_budget": 2.0}})
    scfg = pareto.Study(cfg, tmp_path / "run", tmp_path / "results").search_cfg("softmax", 0, 0.01)
    assert (scfg.temperature.t_max, scfg.temperature.t_min) == (10.0, 0.05)  # the recipe's t_max is kept
    assert (scfg.cost_loss.form, scfg.cost_loss.lambda_budget, scfg.cost_loss.target_latency) == (
        "absolute", 2.0, 0.01)


@pytest.mark.parametrize("tries, message", [
    ({"../x": {}}, "a name of lower-case letters"),
    ({"a": {"relaxations": ["annealing"]}}, "unknown relaxation annealing"),
    ({"a": {"search": {"alpha_rate": 1}}}, "the search has no setting alpha_rate"),
    ({"a": {"targets": [1.0]}}, "targets must be above 1"),
    ({"a": {"budget": 3}}, "unknown settings budget"),
])
def test_bad_tries_are_refused(tries, message):
    from models.errors import UserError

    with pytest.raises(UserError, match=message):
        pareto.validate(StudyConfig(tries=tries))


def test_an_empty_data_folder_is_refused(run_srnas, tmp_path):
    (tmp_path / "data").mkdir()
    r = run_srnas("pareto", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "data"))
    assert r.returncode == 2 and "no images found" in r.stderr and "Traceback" not in r.stderr


def _row(name, kind, target, seed, test, val, ms, relax=None, **extra):
    return {"name": name, "kind": kind, "relax": relax, "target": target, "seed": seed, "psnr_test": test,
            "psnr_val": val, "ssim_test": 0.9, "measured_ms": ms, "gap_db": extra.pop("gap_db", None),
            "bicubic_psnr_test": 30.0, "test_crops": 32, **extra}


def _state(points):
    return {"points": points, "config": StudyConfig().fingerprint(), "host": "test host", "split": {"test": ["a"]},
            "floor": {"measured_ms": 5.0, "predicted_ms": 4.0}, "targets": {"1": 5.0, "2": 10.0}}


def test_the_report_counts_the_tries_time_apart_from_the_study():
    points = [_row("f", "floor", 1.0, 0, 30.0, 30.0, 5.0, wall_seconds=2 * 3600),
              _row("s", "searched", 2.0, 0, 31.0, 30.0, 10.0, "softmax", wall_seconds=3600),
              _row("a", "searched", 2.0, 0, 31.0, 30.0, 10.0, "softmax+absolute", wall_seconds=1800,
                   **{"try": {"name": "absolute", "search": {}}})]
    text = pareto_report.markdown(_state(points), None)
    assert "the study's own 2 points took 3.0 h of worker time, and the tries' 1 points 0.5 h" in text


def test_every_searched_group_of_the_plot_has_its_own_colour_and_baselines_are_grey():
    labels = [None, "softmax", "softmax+longer-search", None, "softmax+sandwich", "softmax+longer-search",
              "softmax+sandwich-warmup", "gumbel-hard"]
    colours = pareto_report.group_colours(labels)
    searched = [colours[label] for label in dict.fromkeys(labels) if label]
    assert len(set(searched)) == len(searched) == 5
    assert colours[None] == pareto_report.BASELINE_COLOUR and colours[None] not in searched
    assert colours["softmax"] == "tab:blue"  # a relaxation keeps its colour whatever tries a study adds


def test_verdicts_compare_at_matched_latency_and_select_on_val():
    points = [_row(f"s{s}", "searched", 2.0, s, 31.0 + 0.05 * s, 30.0, 10.0, "softmax", gap_db=0.3)
              for s in range(3)]
    points += [_row(f"g{s}", "searched", 2.0, s, 35.0, 29.0, 10.0, "gumbel-hard") for s in range(3)]  # worse on val
    points += [_row("n", "narrowed", 2.0, 0, 30.6, 30.0, 10.5), _row("far", "narrowed", 3.0, 0, 40.0, 40.0, 20.0),
               _row("r0", "random", 2.0, 0, 30.9, 29.0, 9.8), _row("r1", "random", 2.0, 0, 30.5, 29.5, 10.2),
               _row("c", "classic", 2.0, 0, 31.2, 30.0, 9.5)]
    (v,) = pareto_report.verdicts(points)
    assert v["relax"] == "softmax"  # val decides, although gumbel-hard's test figures are higher
    assert v["baseline"]["kind"] == "narrowed" and v["baseline"]["test"] == pytest.approx(30.6)  # far one excluded
    assert v["margin"] == pytest.approx(31.05 - 30.6) and v["beats_baselines"]
    assert v["classic"]["test"] == pytest.approx(31.2) and not v["matches_classic"]
    text = pareto_report.markdown(_state(points), None)
    assert text.startswith(pareto_report.START) and "random (best of 2 on val)" not in text.split("| 2× | softmax")[1]
    cheap = [_row(f"cheap{s}", "searched", 1.5, s, 29.0, 29.95, 7.0, "softmax") for s in range(3)]
    assert pareto_report.pick_default(points + cheap)["name"] == "cheap0"  # within 0.1 dB of the best, and faster
    lucky = [_row("lucky", "searched", 2.0, 0, 29.0, 31.0, 6.0, "temperature")]  # 1 seed, best on val
    assert pareto_report.pick_default(points + cheap[:2] + lucky)["name"] == "s0"  # unfinished groups do not compete
    (v,) = pareto_report.verdicts(points + lucky)
    assert v["relax"] == "softmax" and v["n"] == 3
    assert pareto_report.pick_default(points)["name"] == "s0"  # ties on val: the first best seed
    (one,) = pareto_report.verdicts([points[0], *points[6:]])  # one seed: the same margin wins no verdict
    assert one["margin"] > pareto_report.MARGIN_DB and one["n"] == 1 and not one["beats_baselines"]


def test_the_classic_goal_takes_the_searched_network_best_on_val_at_each_classic_size():
    points = [_row("c0", "classic", 2.0, 0, 31.0, 30.0, 9.6), _row("c1", "classic", 2.0, 1, 31.2, 30.0, 10.4),
              _row("far", "classic", 3.0, 0, 31.0, 30.0, 40.0),
              _row("s0", "searched", 2.0, 0, 31.05, 30.5, 10.5, "softmax"),  # best on val: it decides
              _row("s1", "searched", 2.0, 1, 31.9, 30.1, 9.5, "softmax"),  # best on test, not chosen
              _row("s2", "searched", 1.0, 0, 35.0, 35.0, 12.0, "softmax")]  # best on val, but 20 % slower
    near, far = pareto_report.classic_verdicts(points)
    assert near["test"] == pytest.approx(31.1) and near["searched"]["name"] == "s0" and not near["holds"]
    assert far["searched"] is None and not far["holds"]
    points[3]["psnr_test"] = 31.1  # equal to the classic's mean: matches
    assert pareto_report.classic_verdicts(points)[0]["holds"]
    text = pareto_report.markdown(_state(points), None)
    assert "| 2× | 2 | 31.100 @ 10.00 | `s0` | 31.100 @ 10.50 | yes |" in text
    assert "| 3× | 1 | 31.000 @ 40.00 | none within ±10 % | – | – |" in text
    assert "chosen on val matches or beats the classic one at 1 of 2 sizes" in text


def test_placed_models_are_listed_beside_the_pick_and_drawn(tmp_path, monkeypatch):
    points = [_row(f"s{s}", "searched", 2.0, s, 31.0, 30.0, 10.0, "softmax", arch_id="abc") for s in range(3)]
    placed = [{"name": "default", "model": "models/weights/default", "measured_ms": 10.4, "psnr_test": 30.8,
               "psnr_val": 31.3, "ssim_test": 0.93, "arch_id": "abc"},
              {"name": "previous", "model": "old", "measured_ms": 9.1, "psnr_test": 30.5, "psnr_val": 30.9,
               "ssim_test": 0.92, "arch_id": "xyz"}]
    text = pareto_report.markdown({**_state(points), "placed": placed}, None)
    assert "| default | `models/weights/default` | 10.40 | 30.800 | 31.300 | 0.9300 | yes |" in text
    assert "| previous | `old` | 9.10 | 30.500 | 30.900 | 0.9200 | no |" in text
    assert "Placed on the same axes" not in pareto_report.markdown(_state(points), None)
    from matplotlib.axes import Axes

    drawn, real = [], Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda ax, text, *a, **k: drawn.append(text) or real(ax, text, *a, **k))
    assert pareto_report.plot({**_state(points), "placed": placed}, tmp_path / "p.png").stat().st_size > 10_000
    assert drawn == ["default", "previous"]


def test_the_budget_check_sets_longer_training_beside_the_study_budget():
    points = [_row(f"c{s}", "classic", 1.5, s, 31.0 + 0.2 * s, 30.0, 10.0) for s in range(3)]
    points += [_row("pick", "searched", 1.5, 1, 30.8, 30.1, 10.2, "softmax")]
    rows = [{"kind": k, "seed": s, "psnr_test": t, "psnr_val": t - 1} for k, s, t in (
        ("searched", 0, 31.6), ("searched", 1, 31.4), ("classic", 0, 31.3), ("classic", 1, 31.3))]
    check = {"size": 1.5, "iters": 3000, "study_budget": 1000, "searched_point": "pick", "searched_ms": 10.2,
             "classic_ms": 10.0, "rows": rows}
    text = pareto_report.markdown({**_state(points), "budget_checks": {"1.5x-3000": check}}, None)
    assert ("| 1.5× | 1000 (the study's) | `pick` @ 10.20 ms (classic 10.00 ms) | 30.800 ± 0.000 (1) | "
            "31.200 ± 0.200 (3) | 30.100 | 30.000 | -0.400 | no |") in text
    assert ("| 1.5× | 3000 | the same architecture, fresh weights | 31.500 ± 0.141 (2) | 31.300 ± 0.000 (2) | "
            "30.500 | 30.300 | 0.200 | yes |") in text
    assert "Longer training" not in pareto_report.markdown(_state(points), None)


@pytest.mark.slow
def test_quick_study_runs_resumes_and_reports(run_srnas, tmp_path):
    out, results = tmp_path / "run", tmp_path / "results"
    args = ("pareto", "--quick", "--out", str(out), "--results", str(results), "--targets", "2",
            "--relax", "gumbel-hard", "--no-progress")
    r = run_srnas(*args, "--workers", "2")  # two worker processes share the plan and one results folder
    assert r.returncode == 0, r.stderr[-2000:]
    state = json.loads((results / "pareto.json").read_text())
    names = [p["name"] for p in state["points"]]
    assert sorted(names) == sorted(p.name for p in plan(pareto.load_config(
        ROOT / "search/recipes/pareto-tiny.yaml", **{**pareto.QUICK, "targets": [2.0], "relaxations": ["gumbel-hard"]})))
    kinds = {p["kind"] for p in state["points"]}
    assert kinds == {"floor", "searched", "narrowed", "classic", "random"}
    assert set(state["split"]) == {"train", "alpha", "val", "test"}
    assert not set(state["split"]["test"]) & set(state["split"]["train"])
    for p in state["points"]:
        for key in ("name", "kind", "relax", "arch_id", "target_ms", "measured_ms", "seed", "train_iters",
                    "train_seconds", "psnr_val", "psnr_test", "ssim_test", "gap_db", "model"):
            assert key in p, key
        assert p["measured_ms"] > 0 and p["psnr_test"] > 10
        assert len({q["target_ms"] for q in state["points"] if q["target"] == p["target"]}) == 1
    searched = next(p for p in state["points"] if p["kind"] == "searched")
    assert searched["gap_db"] is not None and searched["search_equivalent_iters"] >= 1
    assert all((results / p["model"] / "config.json").is_file() for p in state["points"] if p["model"])
    report = (out / "report.md").read_text()
    assert (results / "pareto.png").stat().st_size > 10_000 and pareto_report.START in report
    assert "with batch 2, patch 32, warmup 1;" in report  # the quick budget's changes to the recipe are named
    assert state["host"] and f"on **{state['host']}**" in report  # as the workers named it
    assert f"raw rows in `{results / 'pareto.json'}`" in report
    hours = pareto_report.worker_hours(state["points"])
    assert hours > 0 and f"own {len(names)} points took {hours:.1f} h of worker time" in report
    stored = json.loads((results / "pareto.json").read_text())  # a searched point at the classic's time (the
    near = next(p for p in stored["points"] if p["kind"] == "searched")["measured_ms"]  # quick nets are any size)
    for p in stored["points"]:
        p["measured_ms"] = near if p["kind"] == "classic" else p["measured_ms"]
    (results / "pareto.json").write_text(json.dumps(stored))
    check = (*args, "--budget-check", "2", "--budget-iters", "6")  # the classic size, trained longer
    r = run_srnas(*check, "--workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    entry = json.loads((results / "pareto.json").read_text())["budget_checks"]["2x-6"]
    assert sorted((row["kind"], row["seed"], row["train_iters"]) for row in entry["rows"]) == [
        ("classic", 0, 6), ("searched", 0, 6)]
    assert entry["searched_point"] in names and entry["fsrcnn"] == next(
        p["fsrcnn"] for p in state["points"] if p["kind"] == "classic")
    assert all(row["psnr_test"] > 10 for row in entry["rows"]) and (out / "budget" / "2x-6" / "searched-s0").is_dir()
    assert "Longer training at a classic size" in (out / "report.md").read_text()
    r = run_srnas(*check)  # resumes: nothing left to train
    assert r.returncode == 0 and "0 budget-check rows trained" in r.stdout
    for bad, message in ((("--budget-check", "2", "--budget-iters", "4"), "must be above the study's budget"),
                         (("--budget-check", "5"), "no classic network of that size")):
        r = run_srnas(*args, *bad)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    state = json.loads((results / "pareto.json").read_text())
    rescored = run_srnas(*args, "--rescore")  # the same crops score the same: the figures and kept models hold
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    assert json.loads((results / "pareto.json").read_text())["points"] == state["points"]
    retimed = run_srnas(*args, "--retime")  # the floor and every point timed again, in this one process
    assert retimed.returncode == 0, retimed.stderr[-2000:]
    fresh = json.loads((results / "pareto.json").read_text())
    floor_ms = fresh["floor"]["measured_ms"]
    assert floor_ms != state["floor"]["measured_ms"] and len(fresh["points"]) == len(state["points"])
    for p in fresh["points"]:
        assert p["retimed"] and p["measured_ms"] == pytest.approx(p["ratio_to_floor"] * floor_ms)
        assert p["target_ms"] == pytest.approx(p["target"] * floor_ms)
    study = pareto.Study(pareto.load_config(ROOT / "search/recipes/pareto-tiny.yaml", **{
        **pareto.QUICK, "targets": [2.0], "relaxations": ["gumbel-hard"]}), out, results)
    for p in fresh["points"]:  # re-timing rebuilds each network from its row: the one that was trained
        trained = out / p["name"] / "train" / "model"
        trained = load_classic(trained) if is_classic(trained) else load_model(trained).net
        rebuilt, _ = study.network(p)
        assert repr(rebuilt) == repr(trained), p["name"]
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in trained.state_dict().items()}, p["name"]
    shutil.rmtree(out)  # the run folder is gone (a reset machine): the results folder alone resumes
    lost = run_srnas(*args, "--rescore")
    assert lost.returncode == 2 and "no model folder for floor-s0" in lost.stderr
    retimed = run_srnas(*args, "--retime")  # needs no run folder
    assert retimed.returncode == 0, retimed.stderr[-2000:]
    state = json.loads((results / "pareto.json").read_text())
    assert [p["name"] for p in state["points"]] == [p["name"] for p in fresh["points"]]
    assert all(p["retimed"] for p in state["points"])
    kept = next(p for p in state["points"] if p["model"] and p["kind"] != "classic")
    placed = run_srnas(*args, "--place", f"again={results / kept['model']}")  # a point's own model, placed
    assert placed.returncode == 0, placed.stderr[-2000:]
    state = json.loads((results / "pareto.json").read_text())
    (row,) = state["placed"]
    assert row["name"] == "again" and row["arch_id"] == kept["arch_id"] and row["measured_ms"] > 0
    assert row["psnr_test"] == kept["psnr_test"] and row["psnr_val"] == kept["psnr_val"]  # the same crops
    assert "| again |" in (out / "report.md").read_text()
    again = run_srnas(*args)
    assert again.returncode == 0 and json.loads((results / "pareto.json").read_text()) == state
    other = run_srnas("pareto", "--quick", "--out", str(out), "--results", str(results), "--targets", "3")
    assert other.returncode == 2 and "other settings" in other.stderr
    retimed = run_srnas(*args, "--retime-floor")
    assert retimed.returncode == 0, retimed.stderr[-2000:]
    after = json.loads((results / "pareto.json").read_text())
    scale = after["floor"]["measured_ms"] / state["floor"]["measured_ms"]
    for old, new in zip(state["points"], after["points"]):  # ratios to the floor are kept, times rescaled
        assert new["ratio_to_floor"] == old["ratio_to_floor"]
        assert new["measured_ms"] == pytest.approx(old["measured_ms"] * scale)


def test_workers_claim_the_next_point_left_and_skip_only_live_claims(tmp_path):
    """Workers share the points left as they go: each takes the next one that is neither finished nor claimed by a
    live worker, and a killed worker's claim does not block its point."""
    cfg = pareto.load_config(ROOT / "search/recipes/pareto-tiny.yaml",
                             **{**pareto.QUICK, "targets": [2.0], "relaxations": ["gumbel-hard"]})
    study = pareto.Study(cfg, tmp_path / "run", tmp_path / "results")
    done, first, second, third = plan(cfg)[:4]
    study.state["points"].append({"name": done.name})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # another live worker
    try:
        study._claim_path(first).parent.mkdir(parents=True)
        study._claim_path(first).write_text(str(other.pid))
        assert study._claim() == second and study._claim_path(second).read_text() == str(os.getpid())
        study._claim_path(second).unlink()
        study._claim_path(third).write_text(str(other.pid))
        assert study._claim() == second
    finally:
        other.kill()
        other.wait()
    assert study._claim() == first  # its worker is gone


def test_a_resumed_study_may_add_targets_but_change_nothing_else(tmp_path):
    """More targets add points beside the finished ones, each a multiple of the stored floor; dropping a target
    or changing another setting would mix studies and is refused."""
    settings = {**pareto.QUICK, "relaxations": ["gumbel-hard"], "targets": [2.0]}
    cfg = pareto.load_config(ROOT / "search/recipes/pareto-tiny.yaml", **settings)
    study = pareto.Study(cfg, tmp_path / "run", tmp_path / "results")
    study.state.update(floor={"measured_ms": 4.0}, targets={"1": 4.0, "2": 8.0}, points=[{"name": "floor-s0"}])
    study._save("test")
    wider = pareto.Study(pareto.load_config(ROOT / "search/recipes/pareto-tiny.yaml", **{**settings, "targets": [1.5, 2.0]}),
                         tmp_path / "run", tmp_path / "results")
    assert wider.state["targets"] == {"1": 4.0, "2": 8.0, "1.5": 6.0}
    assert wider.state["points"] == [{"name": "floor-s0"}]
    assert wider.target_ms(1.5) == 6.0 and wider.state["config"]["targets"] == [1.5, 2.0]
    with wider.locked():  # a worker reads the results folder again before it claims a point
        assert wider.target_ms(1.5) == 6.0
    for changes in ({"targets": [3.0]}, {"targets": [2.0], "budget": 7}):
        with pytest.raises(pareto.UserError, match="other settings"):
            pareto.Study(pareto.load_config(ROOT / "search/recipes/pareto-tiny.yaml", **{**settings, **changes}),
                         tmp_path / "run", tmp_path / "results")


def test_a_stop_signal_while_workers_start_exits_once_they_are_known():
    """SIGTERM inside Popen would leave the child it is starting running, unknown to the list that is stopped on
    the way out: the handler holds it until the workers are all started, then exits with the shell's status."""
    from srnas.workers import STOPPED, ExitOnTerm

    stop, started = ExitOnTerm(), []
    with pytest.raises(SystemExit) as held:
        with stop.deferred():
            stop(signal.SIGTERM, None)
            started.append("worker")
    assert started == ["worker"] and held.value.code == STOPPED == 143
    with pytest.raises(SystemExit):  # after start-up, at once
        stop(signal.SIGTERM, None)


def test_stopping_the_study_stops_its_workers(tmp_path):
    """A study killed with SIGTERM takes its worker processes with it: left running, they would run the plan a
    second time beside a restarted study, in the same run folders."""
    import psutil

    cmd = [*srnas_cmd(), "pareto", "--quick", "--out", str(tmp_path / "run"), "--results", str(tmp_path / "results"),
           "--targets", "2", "--relax", "gumbel-hard", "--workers", "2", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # as a user's shell has it
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    parent, workers = psutil.Process(proc.pid), []
    for _ in range(600):
        workers = parent.children(recursive=True)
        if len(workers) >= 2:
            break
        time.sleep(0.1)
    assert len(workers) == 2, "the study started no workers"
    # side by side, spinning OpenMP threads would take the cores the other worker needs
    assert all(w.environ().get("OMP_WAIT_POLICY") == "PASSIVE" for w in workers)
    proc.terminate()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"workers left running: {[w.pid for w in alive]}"
