"""The SLO gate: after a Locust run, compare the aggregated stats with the configured bounds."""
from __future__ import annotations

import logging

from loadtest.config import SLO

log = logging.getLogger("srnas.slo")


def breaches(total, slo: SLO) -> list[str]:
    """What in locust's aggregated StatsEntry violates slo (empty list: the run passed)."""
    out = []
    if total.num_requests < slo.min_requests:
        out.append(f"only {total.num_requests} requests (< {slo.min_requests})")
    if total.fail_ratio > slo.max_fail_ratio:
        out.append(f"fail ratio {total.fail_ratio:.4f} > {slo.max_fail_ratio}")
    p95 = total.get_response_time_percentile(0.95) if total.num_requests else 0
    if p95 > slo.max_p95_ms:
        out.append(f"p95 {p95:.0f} ms > {slo.max_p95_ms:.0f} ms")
    return out


def gate(environment, slo: SLO) -> list[str]:
    """events.quitting hook: exit code 1 on any breach."""
    found = breaches(environment.stats.total, slo)
    for reason in found:
        log.error("SLO breached: %s", reason)
    if found:
        environment.process_exit_code = 1
    else:
        log.info("SLO met: %d requests, fail ratio %.4f, p95 %s ms", environment.stats.total.num_requests,
                 environment.stats.total.fail_ratio, environment.stats.total.get_response_time_percentile(0.95))
    return found
