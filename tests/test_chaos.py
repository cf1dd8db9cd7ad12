"""`make chaos`'s report (loadtest/chaos.py): the BENCHMARKS.md section is replaced between its markers, never
duplicated, and the rest of the file is left as it was. The scenarios themselves run in
tests/test_serving_abuse.py (bounded) and in `make chaos` (timed)."""
from __future__ import annotations

from loadtest.chaos import BEGIN, END, markdown, write_markdown

RESULT = {
    "loadavg_before": [0.5, 0.4, 0.3],
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
