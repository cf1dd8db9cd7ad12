"""A newcomer's `bentoml serve`: started on an empty BentoML model store (no `srnas store-import` first), it
imports the shipped models itself, serves, documents itself in its own terms on one API page, and logs the
product's own lines."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from models.spec import CONFIG, SHIPPED_MODELS, WEIGHTS
from serving.launch import serving
from tests.conftest import store_import

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"
SHIPPED_HERE = [name for name, folder in SHIPPED_MODELS.items()
                if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """`bentoml serve` from the repository root with an empty model store. SRNAS_SOLO_DIRECT=0 only sends
    every request's tiles through BentoML's batcher, so that the internal API's in-process path is exercised."""
    home = tmp_path_factory.mktemp("empty-bentoml-home")
    env = {"BENTOML_HOME": str(home), "SRNAS_SOLO_DIRECT": "0"}
    with serving(env, log=tmp_path_factory.mktemp("log") / "serve.log", ready_timeout=400) as srv:
        yield srv, home


@pytest.fixture(scope="module")
def document(fresh) -> dict:
    r = httpx.get(fresh[0].url + "/docs.json", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _upscale(url: str, data: bytes) -> httpx.Response:
    return httpx.post(url + "/upscale", files={"image": ("in.png", data, "application/octet-stream")}, timeout=120)


def test_an_empty_store_gets_the_shipped_models_and_the_server_answers(fresh):
    srv, home = fresh
    r = _upscale(srv.url, SAMPLE.read_bytes())
    assert r.status_code == 200, r.text
    lr, sr = Image.open(SAMPLE), Image.open(io.BytesIO(r.content))
    assert sr.size == (2 * lr.size[0], 2 * lr.size[1])
    log = srv.log_text()
    imports = [line for line in log.splitlines() if "imported the shipped model" in line]
    assert len(imports) == len(SHIPPED_HERE) and all("[INFO]" in line for line in imports), log[-3000:]
    for name in SHIPPED_HERE:  # once each, by the serve process, into the store the workers then read
        assert (home / "models" / f"srnas-{name}").is_dir()
        assert sum(f"shipped model {name!r}" in line for line in imports) == 1, imports
    assert "Traceback" not in log


def test_the_document_carries_the_products_description_and_version(document):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    info = document["info"]
    assert info["title"] == "srnas" and info["version"] == version
    assert "/upscale" in info["description"] and "super-resolution" in info["description"]
    assert "created with BentoML" not in info["description"] and "contact" not in info


def test_the_internal_api_is_left_out_of_the_document_and_still_works(fresh, document):
    srv, _ = fresh
    assert "/upscale" in document["paths"] and "/info" in document["paths"]
    assert not any("denoise_tiles" in path for path in document["paths"])
    assert not {"TileJob", "denoise_tiles__Input"} & set(document["components"]["schemas"])
    assert _upscale(srv.url, SAMPLE.read_bytes()).status_code == 200  # its tiles went through the batcher
    assert httpx.get(srv.url + "/info", timeout=30).json()["limits"]["tile_batching"] == "bentoml-dispatcher"


def test_the_error_answers_of_upscale_are_documented_as_they_are_sent(fresh, document):
    responses = document["paths"]["/upscale"]["post"]["responses"]
    for status in ("400", "413", "415", "422", "503"):
        body = responses[status]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/Error"} and responses[status]["description"], status
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["properties"]["error"]["type"] == "string"
    assert "404" not in responses  # BentoML's generic entry: /upscale never answers it
    r = _upscale(fresh[0].url, b"not an image at all")  # what the document says a 415 looks like
    assert r.status_code == 415 and set(r.json()) == {"error"}, r.text


def test_one_api_page(fresh):
    url = fresh[0].url
    page = httpx.get(url + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    docs = httpx.get(url + "/docs", timeout=30, follow_redirects=True)  # where FastAPI users look: the same page
    assert docs.status_code == 200 and docs.text == page.text
    for path in ("/openapi.json", "/redoc"):  # the info app's own document and pages are off
        r = httpx.get(url + path, timeout=30)
        assert r.status_code == 404 and "error" in r.json(), path


def test_the_products_info_lines_are_in_the_server_log(fresh):
    srv, _ = fresh
    serving_lines = [line for line in srv.log_text().splitlines()
                     if "[INFO]" in line and " serving " in line and "as 'default' on onnxruntime" in line]
    assert serving_lines, srv.log_text()[-3000:]


def test_a_tag_already_in_the_store_is_left_as_it_is(tmp_path, second_model_dir):
    """An operator's own folder imported under a shipped tag is what gets served: the start imports nothing over
    it (and a tag that is not a shipped model's is never imported from the shipped folders)."""
    home = tmp_path / "home"
    assert store_import(home, "--model", second_model_dir, "--name", "srnas-default").returncode == 0
    code = "from serving.store import import_missing; print(import_missing({'default': 'srnas-default', " \
           "'mine': 'srnas-mine'}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "BENTOML_HOME": str(home)})
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    assert [p.name for p in (home / "models").iterdir()] == ["srnas-default"]
    assert len([p for p in (home / "models" / "srnas-default").iterdir() if p.name != "latest"]) == 1
