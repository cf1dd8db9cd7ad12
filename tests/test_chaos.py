"""`make chaos`'s report (loadtest/chaos.py): the BENCHMARKS.md section is replaced between its markers, never
duplicated, and the rest of the file is left as it was. The scenarios themselves run in
tests/test_serving_abuse.py (bounded) and in `make chaos` (timed)."""
from __future__ import annotations

from loadtest.chaos import BEGIN, END, markdown, write_markdown

RESULT = {
    "loadavg": {"abandoned": 0.5, "paths": 0.4},
    "abandoned": [{"small_status": 200, "small_s": 0.05, "tile_steps_run": 40, "tile_steps_asked": 50000,
                   "refused": 16, "abandoned": 4}] * 3,
    "paths": [{"codes": [404], "metrics_growth_bytes": 0}],
    "mistakes": [{"codes": {"404": 404, "unknown field": 400}, "server_errors": []}],
}


def test_the_section_is_appended_once_then_replaced_in_place(tmp_path):
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\nsomeone else's section\n")
    write_markdown(bench, markdown(RESULT, "test host"))
    first = bench.read_text()
    assert first.startswith("# Benchmarks\n\nsomeone else's section\n")
    assert first.count(BEGIN) == 1 and first.rstrip().endswith(END)
    assert "| 1,000 random unknown paths (goal: /metrics grows ≤ 1 KB) | codes [404], /metrics grew 0 bytes |" in first
    assert "64×64: 200, 200, 200 in median 0.050 s" in first and "5xx: none" in first
    bench.write_text(first + "\na later section\n")
    changed = {**RESULT, "paths": [{"codes": [404], "metrics_growth_bytes": 12}]}
    write_markdown(bench, markdown(changed, "test host"))
    second = bench.read_text()
    assert second.count(BEGIN) == 1 and "grew 12 bytes" in second and "grew 0 bytes" not in second
    assert second.endswith("a later section\n") and "someone else's section" in second


def test_goals_are_judged_from_the_measurements():
    from loadtest.chaos import goals

    spike = {"refusal_s_p95": 0.03, "deadline_missed": 0, "other_5xx": 0, "p50_back_within_s": 3}
    verdicts = goals({**RESULT, "spike": spike})
    assert verdicts["no 5xx for user mistakes"] == "met" and verdicts["spike"] == "met"
    assert verdicts["64×64 within 1 s after the flood (abandoned)"] == "met, max 0.05 s"
    slow = goals({"abandoned": [{"small_status": 503, "small_s": 30.0}],
                  "spike": {**spike, "refusal_s_p95": 0.2, "p50_back_within_s": None},
                  "mistakes": [{"server_errors": ["long filename"]}]})
    assert slow["64×64 within 1 s after the flood (abandoned)"].startswith("not met")
    assert slow["spike"] == "not met (refusals p95 0.200 s > 0.05, p50 back after None s)"
    assert slow["no 5xx for user mistakes"] == "not met (long filename)"


def test_the_spike_is_a_valid_locust_configuration_at_the_measured_rate():
    """The Locust configuration the spike writes parses with the load test's own schema, and its users and
    pacing give half, twice, then half the sustainable rate."""
    from loadtest import config
    from loadtest.chaos import ChaosConfig, spike_config

    cfg = ChaosConfig(base_s=10, spike_s=20, pacing_s=4)
    spec = spike_config(3.0, cfg)
    parsed = config.parse(spec, "spike")
    shape, mix = parsed.selected, parsed.mix
    assert (shape.base_users / mix.pacing_s, shape.users / mix.pacing_s) == (1.5, 6.0)
    assert (shape.spike_at_s, shape.spike_s, shape.duration_s) == (10, 20, 40)
    assert list(mix.steps) == [10] and mix.images[0].crop[2:] == [96, 80]


def test_spike_figures_from_per_request_records():
    from loadtest.chaos import ChaosConfig, spike_summary

    cfg = ChaosConfig(base_s=10, spike_s=10, spike_deadline_s=2)
    records = [(t, 200, 0.5, "") for t in range(10)]  # before: p50 0.5 s
    records += [(10 + t / 2, 503, 0.02, "over capacity: tile queue") for t in range(10)]
    records += [(10.2, 200, 2.5, ""), (11, 503, 2.0, "deadline of 2 s passed"), (12, 500, 0.1, "boom")]
    records += [(20.5, 200, 1.5, ""), (22.5, 200, 0.55, "")]  # back to 1.2 x p50 in the third second
    s = spike_summary(records, 2.0, cfg)
    assert (s["ok"], s["refused"], s["deadline_missed"], s["other_5xx"]) == (13, 10, 2, 1)
    assert s["refusal_s_median"] == 0.02 and s["p50_pre_s"] == 0.5 and s["p50_back_within_s"] == 3
