"""Serving configuration: workers x runtime threads never exceed the CPU quota; bad values are refused."""
from __future__ import annotations

import pytest

from models.errors import UserError
from serving.config import ServeConfig


@pytest.mark.parametrize("quota,workers,threads,want", [
    (2, 0, 0, (2, 1)),  # default: a worker of one runtime thread per CPU
    (8, 0, 0, (8, 1)),
    (8, 4, 0, (4, 2)),
    (8, 0, 2, (4, 2)),
    (8, 3, 0, (3, 2)),
    (1, 0, 0, (1, 1)),
])
def test_workers_and_threads_fit_the_quota(quota, workers, threads, want):
    cfg = ServeConfig(workers=workers, threads=threads)
    cfg.resolve_cpus(quota)
    assert (cfg.workers, cfg.threads) == want
    assert cfg.workers * cfg.threads <= quota


@pytest.mark.parametrize("workers,threads", [(2, 2), (3, 0)])
def test_oversubscription_is_refused(workers, threads):
    with pytest.raises(UserError):
        ServeConfig(workers=workers, threads=threads).resolve_cpus(2)


def test_from_env(monkeypatch):
    monkeypatch.setenv("SRNAS_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("SRNAS_MAX_LATENCY_MS", "250")
    monkeypatch.setenv("SRNAS_MAX_PIXELS", "4096")
    monkeypatch.setenv("SRNAS_BACKEND", "torch")
    monkeypatch.setenv("SRNAS_WORKERS", "1")
    monkeypatch.setenv("SRNAS_THREADS", "1")
    cfg = ServeConfig.from_env()
    assert (cfg.max_batch_size, cfg.max_latency_ms, cfg.limits.max_pixels, cfg.backend) == (4, 250, 4096, "torch")
    assert (cfg.workers, cfg.threads) == (1, 1)


def test_served_models_and_their_store_tags_come_from_one_variable(monkeypatch):
    """SRNAS_MODELS maps served names to store tags, in order (the first is the default); by default every
    shipped model under srnas-<name>."""
    from models.spec import SHIPPED_MODELS

    cfg = ServeConfig()
    assert cfg.model_tags == {name: f"srnas-{name}" for name in SHIPPED_MODELS} and cfg.default_model == "default"
    assert list(cfg.model_tags) == ["default", "real"]
    monkeypatch.setenv("SRNAS_MODELS", " real = srnas-real:v2 , default=srnas-default ")
    cfg = ServeConfig.from_env()
    assert cfg.model_tags == {"real": "srnas-real:v2", "default": "srnas-default"} and cfg.default_model == "real"


def test_deadline_and_dispatcher_bound(monkeypatch):
    """BentoML's own latency bound is off by default (the request timeout); admission uses the deadline."""
    cfg = ServeConfig()
    assert cfg.max_latency_ms == 0 and cfg.dispatcher_latency_ms == cfg.timeout_s * 1000
    monkeypatch.setenv("SRNAS_DEADLINE_S", "7.5")
    monkeypatch.setenv("SRNAS_MAX_LATENCY_MS", "900")
    cfg = ServeConfig.from_env()
    assert cfg.deadline_s == 7.5 and cfg.dispatcher_latency_ms == 900


@pytest.mark.parametrize("name,value", [("SRNAS_MAX_BATCH_SIZE", "many"), ("SRNAS_MAX_BATCH_SIZE", "1"),
                                        ("SRNAS_MAX_STEPS", "0"), ("SRNAS_OVERLAP", "64"),
                                        ("SRNAS_DEADLINE_S", "0"), ("SRNAS_DEADLINE_S", "301"),
                                        ("SRNAS_ADMIT_HEADROOM", "1.5"), ("SRNAS_MAX_LATENCY_MS", "-1"),
                                        ("SRNAS_PREDICTION", "lookup"), ("SRNAS_CALIBRATION_TIMEOUT_S", "0"),
                                        ("SRNAS_MODELS", "default"), ("SRNAS_MODELS", "Default=srnas-default"),
                                        ("SRNAS_MODELS", "a=srnas-a,a=srnas-b"), ("SRNAS_MODELS", " , "),
                                        ("SRNAS_MODELS", "a=Srnas A")])
def test_bad_env_is_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError):
        ServeConfig.from_env()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_predictions_come_from_the_table_timed_at_the_workers_thread_count(threads):
    """The shipped default has tables timed with 1 and 2 runtime threads; a worker reads the one of its thread
    count, timed on its own host where there is one; a 3-thread worker gets none."""
    from export.backends import LoadedDenoiser
    from export.record import predicted_entries, read_record
    from models.checkpoint import DEFAULT_MODEL_DIR
    from export.runtime import host_id
    from serving.model import prediction_entry
    from serving.prediction import resolve

    every = predicted_entries(read_record(DEFAULT_MODEL_DIR), "onnxruntime")
    tables = [e for e in every if e["threads"] == threads]
    assert {e["threads"] for e in every} == {1, 2}
    loaded = LoadedDenoiser(run=None, backend="onnxruntime", variant="fp32", label="onnxruntime-fp32")
    entry = prediction_entry(DEFAULT_MODEL_DIR, loaded, threads)
    cfg = ServeConfig(prediction="table", threads=threads, max_batch_size=4)
    got, source = resolve(DEFAULT_MODEL_DIR, entry, cfg, {1: 0.01})
    if tables:
        own = [e for e in tables if e["host"] == host_id()]
        expected = (own or tables)[0]
        assert sorted(got) == [1, 2, 3, 4] and got[1] == pytest.approx(expected["seconds"]["1"])
        assert source["kind"] == "table" and source["timed_on"] == expected["host"]
        assert source["this_host"] == host_id() and source["same_host"] == bool(own) and source["threads"] == threads
        assert source["warmup_over_table"] == pytest.approx(0.01 / expected["seconds"]["1"], rel=1e-3)
    else:
        assert got == {} and source["kind"] == "none" and "no latency table" in source["reason"]


def _entry(**changes):
    from export.backends import LoadedDenoiser
    from models.checkpoint import DEFAULT_MODEL_DIR
    from serving.model import prediction_entry

    loaded = LoadedDenoiser(run=None, backend="onnxruntime", variant="fp32", label="onnxruntime-fp32")
    return {**prediction_entry(DEFAULT_MODEL_DIR, loaded, 1), **changes}


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """A temporary folder of the test's own: calibrations are kept there between workers."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_auto_takes_the_table_only_where_its_cpu_model_and_the_warmup_agree(own_tmp):
    from export.runtime import host_id
    from models.checkpoint import DEFAULT_MODEL_DIR
    from serving.prediction import resolve

    entry = _entry(host=host_id())
    cfg = ServeConfig(prediction="auto", threads=1, max_batch_size=8)
    agree = {1: entry["seconds"]["1"] * 1.1, 8: entry["seconds"]["8"] * 0.9}
    got, src = resolve(DEFAULT_MODEL_DIR, entry, cfg, agree)
    assert src["kind"] == "table" and got[8] == pytest.approx(entry["seconds"]["8"])
    # another node with this CPU model (a pod: its node name is new every time) whose warm-up agrees: the table
    pod = _entry(host="srnas-7d9f-xk2lp|" + host_id().split("|", 1)[1])
    got, src = resolve(DEFAULT_MODEL_DIR, pod, cfg, agree)
    assert src["kind"] == "table" and src["same_cpu"] and not src["same_host"]
    # a host of the same name that runs the network 3x slower: the table does not hold, it is calibrated
    got, src = resolve(DEFAULT_MODEL_DIR, entry, cfg, {b: s * 3 for b, s in agree.items()})
    assert src["kind"] == "calibrated" and src["same_host"] and src["warmup_over_table"] > 1.25
    assert set(src["fit"]) == {"1", "2", "4", "8"} and src["calibration_seconds"] > 0
    assert sorted(got) == list(range(1, 9)) and all(s > 0 for s in got.values())
    assert all(set(scales) >= {"rest", "*", "conv3x3"} for scales in src["fit"].values())
    assert src["calibration_cached"] is False and list(own_tmp.glob("srnas-calibration-*.json"))
    # a second worker of this host takes the first one's calibration instead of timing the kit again
    again, src2 = resolve(DEFAULT_MODEL_DIR, entry, cfg, {b: s * 3 for b, s in agree.items()})
    assert src2["calibration_cached"] is True and src2["fit"] == src["fit"] and again == got
    # another CPU model, even with an agreeing warm-up, is calibrated
    _, src = resolve(DEFAULT_MODEL_DIR, _entry(host=host_id() + " (another CPU)"), cfg, agree)
    assert src["kind"] == "calibrated" and not src["same_cpu"]


def test_models_with_the_same_calibration_kit_share_one_fit(tmp_path, own_tmp):
    """The fit is kept by the kit's content, not its folder: a second served model with the same kit (a copy
    elsewhere) takes the first one's fit instead of timing the kit again; a kit that differs is timed."""
    import shutil

    from models.checkpoint import DEFAULT_MODEL_DIR
    from serving.prediction import resolve

    cfg = ServeConfig(prediction="calibrated", threads=1, max_batch_size=2)
    entry = _entry()
    got, src = resolve(DEFAULT_MODEL_DIR, entry, cfg, {1: 0.01})
    assert src["kind"] == "calibrated" and src["calibration_cached"] is False
    copy = tmp_path / "real"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    again, src2 = resolve(copy, entry, cfg, {1: 0.01})
    assert src2["calibration_cached"] is True and src2["fit"] == src["fit"] and again == got
    (copy / "calibration" / "net0.onnx").write_bytes((copy / "calibration" / "net1.onnx").read_bytes())
    _, src3 = resolve(copy, entry, cfg, {1: 0.01})
    assert src3["calibration_cached"] is False


def test_a_failed_calibration_serves_without_a_prediction(tmp_path, caplog, own_tmp):
    import shutil

    from models.checkpoint import DEFAULT_MODEL_DIR
    from serving.prediction import resolve

    cfg = ServeConfig(prediction="calibrated", threads=1, max_batch_size=8)
    bare = tmp_path / "model"
    bare.mkdir()
    for name in ("config.json", "deploy.json"):
        shutil.copy(DEFAULT_MODEL_DIR / name, bare / name)
    with caplog.at_level("WARNING", logger="srnas.serving"):
        got, src = resolve(bare, _entry(), cfg, {1: 0.01})  # no kit in the folder
    assert got == {} and src["kind"] == "none" and "kit.json is missing" in src["reason"]
    assert "calibration failed" in caplog.text
    got, src = resolve(DEFAULT_MODEL_DIR, _entry(source="search/luts/elsewhere.json"), cfg, {1: 0.01})
    assert got == {} and "no timings of search/luts/elsewhere.json" in src["reason"]
    got, src = resolve(DEFAULT_MODEL_DIR, _entry(), ServeConfig(prediction="calibrated", threads=1,
                                                                 calibration_timeout_s=1e-6), {1: 0.01})
    assert got == {} and "took over" in src["reason"]
    got, src = resolve(DEFAULT_MODEL_DIR, {k: v for k, v in _entry().items() if k != "parts"}, cfg, {1: 0.01})
    assert got == {} and "no per-part prediction" in src["reason"]


def test_the_startup_line_names_the_address_actually_bound():
    """BentoML logs 'localhost' for whatever it bound; the filter reads the listening socket instead."""
    import logging
    import socket

    from serving.hardening import TrueBindAddress

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        record = logging.LogRecord("bentoml.serve", logging.INFO, __file__, 1, 'Starting production %s BentoServer '
                                   'from "%s" listening on %s://%s:%d (Press CTRL+C to quit)',
                                   ("HTTP", ".", "http", "localhost", port), None)
        assert TrueBindAddress().filter(record)
    assert f"listening on http://127.0.0.1:{port} " in record.getMessage()
    assert "every network interface" not in record.getMessage()


def test_a_corrupt_deploy_record_serves_without_a_prediction(tmp_path, own_tmp, caplog):
    import shutil

    from models.checkpoint import DEFAULT_MODEL_DIR
    from serving.model import load_served

    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    (folder / "deploy.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="srnas.serving"):
        served = load_served(folder, ServeConfig(threads=1, workers=1, warmup_runs=1))
    src = served.describe()["prediction_source"]
    assert served.predicted == {} and src["kind"] == "none" and "deploy.json is unreadable" in src["reason"]
    assert served.params is None and served.step_s and "without a step-latency prediction" in caplog.text


def test_the_workers_of_one_server_decide_the_prediction_on_one_warm_up(own_tmp):
    """Two workers (here two loads in one process, which share a parent as a server's workers do) each time their
    own warm-up for admission, but the table-or-calibration decision reads the first one's timing, so both publish
    the same prediction from the same source."""
    from models.checkpoint import DEFAULT_MODEL_DIR
    from serving.model import load_served

    cfg = ServeConfig(threads=1, workers=2, warmup_runs=1, max_batch_size=2)
    first, second = load_served(DEFAULT_MODEL_DIR, cfg), load_served(DEFAULT_MODEL_DIR, cfg)
    a, b = first.describe()["prediction_source"], second.describe()["prediction_source"]
    assert a["warmup_over_table"] is not None and a["warmup_over_table"] == b["warmup_over_table"]
    assert a["kind"] == b["kind"] != "none" and first.predicted == second.predicted
    assert first.step_s and second.step_s  # each worker's own timing still sets its admission
