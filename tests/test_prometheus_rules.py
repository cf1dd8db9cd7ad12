"""promtool check rules and promtool test rules on the extracted rule file. promtool comes from
Debian's prometheus package, which .ci/run installs: in CI a missing promtool fails these tests."""
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from loadtest import promrules


@pytest.fixture
def promtool():
    exe = shutil.which("promtool")
    if exe is None:
        message = "promtool missing: apt-get install -y prometheus (Debian)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def test_rules_check_and_unit_tests_pass(promtool, tmp_path):
    result = promrules.check(tmp_path)
    assert "SUCCESS" in result.stdout


def test_unit_tests_catch_a_wrong_alert_band(promtool, tmp_path):
    """Widening the alert band to 0.4-2.5 must break the alert test: the tests can fail."""
    rule_file = promrules.write_rule_files(tmp_path)
    text = rule_file.read_text().replace("< 0.8", "< 0.4").replace("> 1.25", "> 2.5")
    assert text != rule_file.read_text()
    rule_file.write_text(text)
    result = subprocess.run([promtool, "test", "rules", "rules.test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "SRStepLatencyOffPrediction" in result.stdout + result.stderr


def test_check_rejects_broken_promql(promtool, tmp_path):
    groups = promrules.rule_groups()
    groups["groups"][0]["rules"][0]["expr"] = "histogram_quantile(0.5, sum by (le) (rate(x[5m]))"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(groups))
    result = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0


class Exporter(BaseHTTPRequestHandler):
    """Loopback /metrics in the service's metric names: every scrape adds 10 steps per batch size;
    batch 1 steps take 0.25 s as predicted, batch 8 steps 0.5 s (twice the prediction, at the same load)."""
    scrapes = 0

    def do_GET(self):
        type(self).scrapes += 1
        n = 10 * type(self).scrapes
        lines = ["# TYPE sr_denoise_step_seconds histogram", "# TYPE sr_predicted_step_seconds gauge",
                 "# TYPE sr_expected_step_seconds counter"]
        for batch, step_s in (("1", 0.25), ("8", 0.5)):
            labels = f'backend="onnxruntime",batch_size="{batch}"'
            lines += [f'sr_denoise_step_seconds_bucket{{{labels},le="+Inf"}} {n}',
                      f"sr_denoise_step_seconds_sum{{{labels}}} {step_s * n}",
                      f"sr_denoise_step_seconds_count{{{labels}}} {n}",
                      f"sr_predicted_step_seconds{{{labels}}} 0.25",
                      f"sr_expected_step_seconds_total{{{labels}}} {0.25 * n}"]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_local_prometheus_records_the_ratio_and_gives_a_verdict(promtool, tmp_path, monkeypatch):
    """Debian's Prometheus with the extracted rules, scraping a loopback exporter: the ratio recorded
    through the real rule engine reaches the verdict (the path `make observe` takes)."""
    from loadtest import observe

    if shutil.which("prometheus") is None:
        pytest.fail("prometheus binary missing although promtool is there")
    exporter = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (Exporter,), {"scrapes": 0}))
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    try:
        monkeypatch.chdir(tmp_path)  # a relative folder, as `make observe` passes (--out runs/observe)
        with observe.prometheus(Path("observe"), f"127.0.0.1:{exporter.server_address[1]}") as prom:
            assert sorted(observe.rule_groups(prom)) == ["srnas.alerts", "srnas.recording"]
            deadline, ratios, overall = time.monotonic() + 60, [], []
            while (len(ratios) < 2 or not overall) and time.monotonic() < deadline:
                time.sleep(1)
                ratios, overall = observe.query(prom, observe.RATIO), observe.query(prom, observe.OVERALL)
    finally:
        exporter.shutdown()
        exporter.server_close()
    by_batch = {r["batch_size"]: r["value"] for r in ratios}
    assert by_batch == {"1": pytest.approx(1.0), "8": pytest.approx(2.0)}
    assert [r["value"] for r in overall] == [pytest.approx(1.5)]  # equal step counts: (1 + 2) / 2
    held, line = observe.verdict(overall, ratios)
    assert not held and line.startswith("search latency estimate missed")
    assert "onnxruntime 1.50x (batch sizes 1.00-2.00)" in line


def test_verdict_holds_inside_the_band_and_ignores_empty_batches():
    from loadtest import observe

    overall = [{"backend": "tensorrt", "value": 1.1}]
    per_batch = [{"backend": "tensorrt", "batch_size": "1", "value": 0.9},
                 {"backend": "tensorrt", "batch_size": "2", "value": float("nan")}]
    held, line = observe.verdict(overall, per_batch)
    assert held and "tensorrt 1.10x (batch sizes 0.90-0.90)" in line
    held, line = observe.verdict([{"backend": "tensorrt", "value": float("nan")}], per_batch)
    assert not held and line.startswith("no observed/predicted ratio")
