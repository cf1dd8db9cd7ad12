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
                                        ("SRNAS_ADMIT_HEADROOM", "1.5"), ("SRNAS_MAX_LATENCY_MS", "-1")])
def test_bad_env_is_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError):
        ServeConfig.from_env()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_predictions_come_from_the_table_timed_at_the_workers_thread_count(threads):
    """The shipped default has tables timed with 1 and 2 runtime threads (1 thread on two hosts); a worker
    reads the one of its thread count, timed on its own host where there is one; a 3-thread worker gets none."""
    from export.backends import LoadedDenoiser
    from export.record import predicted_entries, read_record
    from models.checkpoint import DEFAULT_MODEL_DIR
    from export.runtime import host_id
    from serving.model import per_batch, prediction_entry, prediction_source

    every = predicted_entries(read_record(DEFAULT_MODEL_DIR), "onnxruntime")
    tables = [e for e in every if e["threads"] == threads]
    assert {e["threads"] for e in every} == {1, 2}
    loaded = LoadedDenoiser(run=None, backend="onnxruntime", variant="fp32", label="onnxruntime-fp32")
    entry = prediction_entry(DEFAULT_MODEL_DIR, loaded, threads)
    got, source = per_batch(entry, max_batch=4), prediction_source(entry)
    if tables:
        own = [e for e in tables if e["host"] == host_id()]
        expected = (own or tables)[0]
        assert sorted(got) == [1, 2, 3, 4] and got[1] == pytest.approx(expected["seconds"]["1"])
        assert source["timed_on"] == expected["host"] and source["this_host"] == host_id()
        assert source["same_host"] == bool(own) and source["threads"] == threads
    else:
        assert got == {} and source is None
    if threads == 1:
        assert len({e["host"] for e in tables}) == 2  # the Intel and the AMD development hosts


def test_a_prediction_timed_on_other_hardware_is_flagged(caplog):
    from serving.model import prediction_source

    entry = {"source": "t.json", "host": "vm|some other CPU", "threads": 1, "seconds": {"1": 0.01}}
    with caplog.at_level("WARNING", logger="srnas.serving"):
        src = prediction_source(entry)
    assert src["same_host"] is False and "timed on vm|some other CPU" in caplog.text


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
