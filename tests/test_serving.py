"""The BentoML service over real HTTP: a real `bentoml serve` on 127.0.0.1 with its own model store."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.launch import serving

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"
MAX_BYTES = 300_000
MAX_PIXELS = 96 * 96


@pytest.fixture(scope="module")
def server(bento_home, tmp_path_factory):
    env = {"BENTOML_HOME": str(bento_home), "SRNAS_MAX_BYTES": str(MAX_BYTES), "SRNAS_MAX_PIXELS": str(MAX_PIXELS),
           "SRNAS_MAX_STEPS": "20"}
    with serving(env, log=tmp_path_factory.mktemp("log") / "serve.log") as srv:
        yield srv
        assert "Traceback" not in srv.log_text()  # user mistakes are not server errors


def png(arr: np.ndarray | Image.Image, fmt: str = "PNG", **kw) -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(h: int, w: int) -> np.ndarray:
    return np.asarray(Image.open(SAMPLE).convert("RGB").resize((w, h), Image.Resampling.BICUBIC))


def post(server, data: bytes | None = None, timeout: float = 120, **fields) -> httpx.Response:
    files = {"image": ("in.png", data, "application/octet-stream")} if data is not None else None
    return httpx.post(server.url + "/upscale", files=files, data={k: str(v) for k, v in fields.items()} or None,
                      timeout=timeout)


def decoded(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


@pytest.mark.parametrize("h,w", [(64, 64), (8, 8), (40, 57), (96, 80)])
def test_upscale_any_size_is_2x(server, h, w):
    out = decoded(post(server, png(photo(h, w))))
    assert out.shape == (2 * h, 2 * w, 3)


def test_tiles_are_blended_without_seams(server):
    """A 96x96 image runs as 4 overlapping tiles; the result tracks bicubic everywhere, seams included."""
    lr = photo(96, 96)
    out = decoded(post(server, png(lr))).astype(float)
    bic = np.asarray(Image.fromarray(lr).resize((192, 192), Image.Resampling.BICUBIC)).astype(float)
    err = np.abs(out - bic).mean(axis=2)
    assert err.mean() < 8
    seam = err[:, 100:124].mean()  # the overlap band between the two tile columns
    assert seam < 3 * err.mean() + 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_grayscale_alpha_and_palette_are_converted(server, mode):
    img = Image.fromarray(photo(32, 24)).convert(mode)
    assert decoded(post(server, png(img))).shape == (64, 48, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_jpeg_and_webp(server, fmt):
    assert decoded(post(server, png(photo(30, 20), fmt))).shape == (60, 40, 3)


def test_same_seed_same_bytes(server):
    data = png(photo(48, 40))
    a = post(server, data, seed=7, steps=2, sampler="ddpm")
    b = post(server, data, seed=7, steps=2, sampler="ddpm")
    c = post(server, data, seed=8, steps=2, sampler="ddpm")
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.content == b.content
    assert a.content != c.content


def test_steps_and_sampler_fields(server):
    data = png(photo(24, 24))
    for fields in ({"steps": 3, "sampler": "ddim"}, {"steps": 2, "sampler": "ddpm"}, {"steps": 20}):
        assert decoded(post(server, data, **fields)).shape == (48, 48, 3)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with one tiny compressed row: never decodable cheaply."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def truncated() -> bytes:
    data = png(photo(64, 64))
    return data[: len(data) // 2]


BAD = {
    "missing image": (None, {}, 400),
    "zero bytes": (b"", {}, 400),
    "non-image bytes": (b"this is not an image, just text" * 10, {}, 415),
    "truncated PNG": ("truncated", {}, 400),
    "decompression bomb": ("bomb", {}, 413),
    "too many pixels": ("big", {}, 413),
    "too many bytes": ("huge", {}, 413),
    "under 8 px": ("tiny", {}, 400),
    "steps 0": ("ok", {"steps": 0}, 400),
    "steps negative": ("ok", {"steps": -3}, 400),
    "steps non-integer": ("ok", {"steps": 1.5}, 400),
    "steps text": ("ok", {"steps": "many"}, 400),
    "steps huge": ("ok", {"steps": 10**9}, 400),
    "unknown sampler": ("ok", {"sampler": "euler"}, 400),
    "unknown model": ("ok", {"model": "fancy"}, 400),
    "seed non-integer": ("ok", {"seed": "abc"}, 400),
    "seed float": ("ok", {"seed": 1.25}, 400),
    "seed negative": ("ok", {"seed": -1}, 400),
    "unknown field (typo)": ("ok", {"step": 50}, 400),
    "decompression bomb, tall": ("tallbomb", {}, 413),
}


def bad_body(kind) -> bytes | None:
    if not isinstance(kind, str):
        return kind
    rng = np.random.default_rng(0)
    return {"truncated": truncated, "bomb": lambda: bomb_png(60_000, 60_000), "tallbomb": lambda: bomb_png(8, 10**7),
            "big": lambda: png(photo(100, 100)), "tiny": lambda: png(photo(7, 30)),
            "huge": lambda: png(rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)) + bytes(MAX_BYTES),
            "ok": lambda: png(photo(16, 16))}[kind]()


@pytest.mark.parametrize("name", list(BAD))
def test_user_mistakes_get_4xx_json(server, name):
    body, fields, status = BAD[name]
    r = post(server, bad_body(body), **fields)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()
    assert isinstance(err, dict) and err["error"]
    assert "Traceback" not in r.text


def test_text_instead_of_file_is_not_fetched(server):
    body = (b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nhttp://127.0.0.1:1/never.png\r\n'
            b"--b--\r\n")  # multipart, with the image field as text (not a file part)
    r = httpx.post(server.url + "/upscale", content=body, timeout=30,
                   headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 415, r.text
    assert "not a PNG" in r.json()["error"]


def test_bomb_is_refused_before_decoding(server):
    r = post(server, bomb_png(60_000, 60_000))
    assert r.status_code == 413
    err = r.json()["error"]
    assert "3600000000 pixels" in err  # read from the header alone
    assert f"at most {MAX_PIXELS} pixels" in err  # the service's own limit, not Pillow's guard


def test_unknown_and_repeated_fields_are_400_naming_the_allowed_ones(server):
    data = png(photo(16, 16))
    r = post(server, data, step=50)
    assert r.status_code == 400
    assert "allowed fields: image, steps, sampler, seed, model" in r.json()["error"]
    assert "unknown field 'step'" in json.dumps(r.json()["detail"])
    twice = httpx.post(server.url + "/upscale", files=[("image", ("a.png", data)), ("image", ("b.png", data))],
                       timeout=60)
    assert twice.status_code == 400 and "'image' given 2 times" in json.dumps(twice.json()["detail"])
    steps_twice = httpx.post(server.url + "/upscale", files={"image": ("a.png", data)},
                             data={"steps": ["1", "2"]}, timeout=60)
    assert steps_twice.status_code == 400 and "'steps' given 2 times" in json.dumps(steps_twice.json()["detail"])


@pytest.mark.parametrize("name", ["x" * 300 + ".png", "../../etc/passwd", "a/b\\c.png", "\u00e9" * 200])
def test_the_clients_filename_is_never_a_path(server, name):
    r = httpx.post(server.url + "/upscale", files={"image": (name, png(photo(16, 16)))}, timeout=60)
    assert decoded(r).shape == (32, 32, 3)


def test_16_bit_grey_png_is_scaled_not_saturated(server):
    grey = photo(32, 32)[..., 0].astype(np.uint16) * 257  # the 8-bit photo, spread over 16 bits
    out = decoded(post(server, png(Image.fromarray(grey)), steps=1)).astype(float)
    bic = np.asarray(Image.fromarray(photo(32, 32)[..., 0]).resize((64, 64), Image.Resampling.BICUBIC)).astype(float)
    assert np.abs(out.mean(axis=2) - bic).mean() < 8  # near the 8-bit version, not 0/255 everywhere


def test_exif_orientation_is_applied(server):
    from PIL import ImageOps

    stored = Image.fromarray(photo(32, 48))  # stored 48 wide x 32 high, tagged "rotate 90 CW to display"
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decoded(post(server, png(stored, "JPEG", exif=exif.tobytes(), quality=95)))
    assert out.shape == (96, 64, 3)  # displayed 32 wide x 48 high, doubled
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(png(stored, "JPEG", exif=exif.tobytes(),
                                                                                quality=95)))))
    bic = np.asarray(Image.fromarray(upright).resize((64, 96), Image.Resampling.BICUBIC)).astype(float)
    assert np.abs(out.astype(float) - bic).mean() < 10


def test_server_survives_bad_input(server):
    for name in BAD:
        body, fields, _ = BAD[name]
        post(server, bad_body(body), **fields)
    assert httpx.get(server.url + "/livez").status_code == 200
    assert decoded(post(server, png(photo(16, 16)))).shape == (32, 32, 3)


def test_info_describes_the_served_model(server):
    decoded(post(server, png(photo(16, 16))))
    info = httpx.get(server.url + "/info").json()
    assert info["preset"] == "tiny-fold2-nonorm"  # the norm-free folded study's pick
    from models.checkpoint import load_model
    from search.costs import count_params

    shipped = load_model()  # the searched subnet in models/weights/default
    assert info["params"] == count_params(shipped.net) and 10_000 < info["params"] < 5_000_000
    assert info["arch"] and info["arch"] == shipped.net.cfg.arch
    assert 1e8 < info["flops_per_step"] < 1e9
    assert info["backend"]["name"] == "onnxruntime" and info["backend"]["label"] == "onnxruntime-fp32"
    assert info["defaults"] == {"steps": 1, "sampler": "ddim", "eta": 0.0}
    assert info["limits"]["max_pixels"] == MAX_PIXELS
    adm = info["limits"]["admission"]  # the answering worker's admission state
    assert adm["slowdown"] > 0 and adm["queue_s"] >= 0 and set(adm["idle_step_s"]) == {"1", "16"}
    observed = info["step_latency"]["onnxruntime-fp32"]["1"]
    assert observed["count"] >= 1 and 0 < observed["observed_s"] < 10
    assert "/store" not in info["path"] and "srnas-default" in info["path"]  # served from the model store
    # the shipped models, the default among them and described at the top level as well
    assert info["default_model"] == "default" and list(info["models"]) == ["default", "real"]
    assert info["models"]["default"]["params"] == info["params"] and info["tag"].startswith("srnas-default:")
    from export.runtime import host_id

    src = info["prediction_source"]  # where the prediction was timed, beside where it is served
    assert src["table"].startswith("search/luts/") and src["this_host"] == host_id()
    assert src["same_host"] == (src["timed_on"] == host_id()) and src["threads"] == info["limits"]["threads"]
    # the table is taken only where it holds here; else it is mapped onto this host by the model's kit
    assert src["kind"] in ("table", "calibrated")
    if src["kind"] == "table":
        assert src["same_host"] and 0.8 <= src["warmup_over_table"] <= 1.25
    else:
        assert src["calibration_seconds"] > 0 and set(src["fit"]) <= {"1", "2", "4", "8"}
    assert set(info["predicted_step_seconds"]) == {str(b) for b in range(1, info["limits"]["max_batch_size"] + 1)}


def test_openapi_lists_info_and_upscale(server):
    spec = httpx.get(server.url + "/docs.json").json()
    assert "/info" in spec["paths"] and "get" in spec["paths"]["/info"]
    assert "/upscale" in spec["paths"]
    form = json.dumps(spec["paths"]["/upscale"])
    for field in ("image", "steps", "sampler", "seed", "model"):
        assert field in form


def test_metrics_exposed(server):
    decoded(post(server, png(photo(40, 40)), steps=2))
    text = httpx.get(server.url + "/metrics").text
    for name in ("sr_denoise_step_seconds_bucket", "sr_request_tiles_bucket", "sr_queue_wait_seconds_bucket",
                 "sr_requested_steps_bucket", "sr_inflight_requests", "sr_solo_direct_requests_total",
                 "bentoml_service_request_total"):
        assert name in text, name
    assert 'sr_denoise_step_seconds_count{backend="onnxruntime-fp32",batch_size="1"}' in text
    # beside each step's wall time, the CPU seconds of the worker's process in it (a positive amount)
    cpu = [line for line in text.splitlines()
           if line.startswith('sr_denoise_step_cpu_seconds_total{backend="onnxruntime-fp32",batch_size="1"}')]
    assert cpu and float(cpu[0].split()[-1]) > 0
    # and the prediction of each step at the load it ran under, where the worker has a prediction
    if httpx.get(server.url + "/info").json()["predicted_step_seconds"]:
        assert 'sr_expected_step_seconds_total{backend="onnxruntime-fp32",batch_size="1"}' in text


def metric_total(server, name: str) -> float:
    """A metric's value summed over its label sets (0 when it has no sample yet)."""
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def test_a_lone_request_skips_the_batch_dispatcher(server):
    """One request alone in its worker runs at once (SRNAS_SOLO_DIRECT, the default): it counts in
    sr_solo_direct_requests_total and never enters BentoML's adaptive batching, whose learned wait would
    only hold it for company that is not there. Concurrent requests batching: tests/test_serving_load.py."""
    assert httpx.get(server.url + "/info").json()["limits"]["solo_direct"] is True
    solo, batches = (metric_total(server, n) for n in ("sr_solo_direct_requests_total",
                                                       "bentoml_service_adaptive_batch_size_count"))
    decoded(post(server, png(photo(40, 40)), steps=2))
    assert metric_total(server, "sr_solo_direct_requests_total") == solo + 1
    assert metric_total(server, "bentoml_service_adaptive_batch_size_count") == batches


def test_streamed_body_over_the_limit_is_413(server):
    """No Content-Length (chunked upload): the body is counted while it streams."""
    def body():
        yield b"--xx\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(2 * MAX_BYTES // 65536 + 2):
            yield bytes(65536)

    r = httpx.post(server.url + "/upscale", content=body(), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 413 and "request body over" in r.json()["error"]
    assert f"an image of at most {MAX_BYTES} bytes (SRNAS_MAX_BYTES)" in r.json()["error"]  # the service's terms
    assert httpx.get(server.url + "/livez").status_code == 200


@pytest.mark.parametrize("ref, message", [("AAAA", "pattern"), ("0" * 32, "unknown tile reference")])
def test_internal_tile_api_refuses_what_it_does_not_hold(server, ref, message):
    """/denoise_tiles takes references to tiles the front holds, never tiles from outside."""
    job = {"ref": ref, "model": "default", "steps": 1, "sampler": "ddim", "seed": 0}
    r = httpx.post(server.url + "/denoise_tiles", json={"jobs": [job]}, timeout=30)
    assert r.status_code == 400 and message in json.dumps(r.json())
    assert httpx.get(server.url + "/livez").status_code == 200


@pytest.mark.parametrize("method,path,status", [("GET", "/no/such/path", 404), ("GET", "/upscale", 405),
                                                ("POST", "/info", 405), ("DELETE", "/readyz", 405)])
def test_every_error_has_a_json_body(server, method, path, status):
    r = httpx.request(method, server.url + path, timeout=30)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]


@pytest.mark.parametrize("head", [b"Content-Length: abc\r\n", b"Content-Length: 5\r\nContent-Length: 6\r\n"])
def test_a_malformed_request_gets_json_400(server, head):
    """uvicorn answers these itself, before any middleware; the answer is JSON all the same."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(b"POST /upscale HTTP/1.1\r\nHost: x\r\n" + head + b"\r\nhello")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    status, _, rest = raw.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in headers.lower()
    assert "malformed HTTP request" in json.loads(body)["error"]


@pytest.mark.slow
def test_unknown_paths_add_no_metric_series(server):
    """1,000 random paths: each gets a JSON 404 in front of BentoML's metrics, so /metrics grows by at most
    1 KB (it grew by about 4 KB per path when every path became a label)."""
    import secrets

    from prometheus_client.parser import text_string_to_metric_families

    before = len(httpx.get(server.url + "/metrics").text.encode())
    with httpx.Client(timeout=30) as client:
        codes = {client.get(f"{server.url}/{secrets.token_hex(8)}/x").status_code for _ in range(1000)}
    assert codes == {404}
    text = httpx.get(server.url + "/metrics").text
    assert len(text.encode()) - before <= 1024, len(text.encode()) - before
    endpoints = {s.labels["endpoint"] for f in text_string_to_metric_families(text) for s in f.samples
                 if "endpoint" in s.labels}
    assert endpoints and all(e.count("/") <= 1 for e in endpoints), endpoints  # no random path among them
