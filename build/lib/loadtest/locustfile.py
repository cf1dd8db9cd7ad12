"""Locust load test of POST /upscale with real images and a mix of step counts and samplers.

    SRNAS_LOAD_SHAPE=ramp|soak|spike|smoke  SRNAS_LOAD_CONFIG=loadtest/config.yaml
    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:3000

The configured shape drives the users; the SLO gate sets a non-zero exit code on breach. With
SRNAS_LOAD_RECORDS=FILE every request is also written to FILE as one JSON line (sent at, status, seconds,
the error's message), for analyses that need each request rather than Locust's aggregates."""
import json
import os
import random

from locust import HttpUser, between, constant_pacing, events, task

from loadtest import config, images, shapes, slo

CFG = config.load()
Load = shapes.shape_class(CFG.selected)  # the one shape class Locust finds here
PAYLOADS = [images.payload(spec) for spec in CFG.mix.images]


def _pick(table: dict):
    return random.choices(list(table), weights=list(table.values()))[0]


class Upscaler(HttpUser):
    wait_time = constant_pacing(CFG.mix.pacing_s) if CFG.mix.pacing_s else between(*CFG.mix.wait_s)

    @task
    def upscale(self):
        image = random.choices(PAYLOADS, weights=[p.weight for p in PAYLOADS])[0]
        steps, sampler = _pick(CFG.mix.steps), _pick(CFG.mix.samplers)
        form = {"steps": str(steps), "sampler": sampler, "seed": str(random.randrange(2**31))}
        with self.client.post("/upscale", files={"image": (f"{image.name}.png", image.png, "image/png")},
                              data=form, name=f"/upscale steps={steps}", timeout=CFG.mix.timeout_s,
                              catch_response=True) as response:
            size = images.png_size(response.content or b"")
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif size != (2 * image.width, 2 * image.height):
                response.failure(f"expected a {2 * image.width}x{2 * image.height} PNG, got {size}")


_records = open(os.environ[config.RECORDS_ENV], "a", buffering=1) if os.environ.get(config.RECORDS_ENV) else None


@events.request.add_listener
def _record(start_time, response_time, response=None, exception=None, **_kwargs):
    if _records is None:
        return
    status = getattr(response, "status_code", 0) or type(exception).__name__
    error = ""
    if isinstance(status, int) and status >= 400:
        try:
            error = response.json().get("error", "")
        except ValueError:
            error = (response.text or "")[:200]
    _records.write(json.dumps({"sent": start_time, "status": status, "seconds": response_time / 1000,
                               "error": error}) + "\n")


@events.quitting.add_listener
def _slo_gate(environment, **_kwargs):
    slo.gate(environment, CFG.slo)
