"""The documentation: README.md and docs/*.md stay short, linked, true to the code, and their examples run.

- the README's curl command and Python client snippet run against a real `bentoml serve` (slow);
- the README stays within 250 lines of reasonable width, and keeps exactly two set-up commands;
- every relative link points to an existing file (and an existing heading, where it names one);
- docs/serving.md's SRNAS_* table is what `python -m docs.config_table` generates from serving/config.py, and
  every SRNAS_* name in the code is on that page;
- no development-history references (numbered issues, sessions, stops);
- the figure script draws its three-panel picture, and the committed one is small.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # docs/ is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from docs import config_table, figures  # noqa: E402

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"
README_URL = "http://127.0.0.1:3000"

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HISTORY = re.compile(r"\b(issue|session|stop|ticket|sprint|milestone)s? ?#?\d+", re.IGNORECASE)
VARIABLE = re.compile(r"\bSRNAS_[A-Z0-9_]*[A-Z0-9]\b")
# where the code lives; results, run folders and environments are data
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".sh", ".cfg", ".ini", ".json"}
CODE_NAMES = {"Makefile", "run", "Dockerfile"}
NOT_CODE = {".git", ".venv", "runs", "docs", "bench/results", "srnas.egg-info", "__pycache__", ".pytest_cache"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose_and_tables(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(prose lines, table rows) outside fenced code blocks, with their line numbers."""
    prose, rows, fenced = [], [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            (rows if line.lstrip().startswith("|") else prose).append((n, line))
    return prose, rows


def marked_block(name: str) -> str:
    """The fenced block right after `<!-- test: NAME -->` in README.md."""
    m = re.search(rf"<!-- test: {re.escape(name)} -->\s*\n```[a-z]*\n(.*?)\n```", README.read_text(), re.DOTALL)
    assert m, f"README.md has no code block marked <!-- test: {name} -->"
    return m.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = prose_and_tables(path)
    return {slug(line.lstrip("#")) for _, line in prose if re.match(r"#{1,6} ", line)}


# ---- shape of the pages ----------------------------------------------------------------------
def test_readme_is_short_and_of_reasonable_width():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    prose, rows = prose_and_tables(README)
    assert [n for n, line in prose if len(line) > 200] == [], "README.md: prose lines over 200 characters"
    assert [n for n, row in rows if len(row) >= 300] == [], "README.md: table rows of 300 characters or more"


@pytest.mark.parametrize("page", DOCS, ids=rel)
def test_docs_pages_are_of_reasonable_width(page):
    """The same rule for docs/; a generated configuration row may run a little longer than README's tables."""
    prose, rows = prose_and_tables(page)
    assert [n for n, line in prose if len(line) > 200] == [], f"{rel(page)}: prose lines over 200 characters"
    assert [n for n, row in rows if len(row) >= 400] == [], f"{rel(page)}: table rows of 400 characters or more"


def test_readme_keeps_exactly_two_setup_commands_and_they_exist():
    """`make demo` (the main job) and `make test` (what .ci/run calls), and nothing else in the set-up."""
    setup = README.read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", setup, re.DOTALL)
    assert [b.strip() for b in blocks] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_point_to_existing_files(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{rel(page)}: broken links"


@pytest.mark.parametrize("page", [*PAGES, ROOT / "BENCHMARKS.md"], ids=rel)
def test_no_development_history_references(page):
    found = [m.group(0) for m in HISTORY.finditer(page.read_text())]
    assert found == [], f"{rel(page)} speaks of the project's history, not of the project: {found}"


# ---- the configuration table -----------------------------------------------------------------
def test_serving_page_configuration_table_is_generated_from_the_code():
    assert config_table.page_table() == config_table.table(), (
        "docs/serving.md's SRNAS_* table differs from serving/config.py; run python -m docs.config_table --write")


def test_every_table_row_names_a_field_and_its_meaning():
    from serving.config import Limits, ServeConfig

    rows = config_table.rows()
    fields = [f for f in [*ServeConfig.__dataclass_fields__, *Limits.__dataclass_fields__] if f != "limits"]
    assert [v.strip("`") for v, _, _ in rows] == [f"SRNAS_{f.upper()}" for f in fields]
    assert [v for v, _, meaning in rows if not meaning.strip()] == [], "fields without a comment in serving/config.py"


def code_files() -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = [d for d in dirs if d not in NOT_CODE and rel(here / d) not in NOT_CODE]
        out += [here / f for f in files if Path(f).suffix in CODE_SUFFIXES or f in CODE_NAMES]
    return out


def test_every_srnas_variable_in_the_code_is_on_the_serving_page():
    page = (ROOT / "docs" / "serving.md").read_text()
    found: dict[str, str] = {}
    for path in code_files():
        for name in VARIABLE.findall(path.read_text(errors="replace")):
            found.setdefault(name, rel(path))
    assert "SRNAS_MODELS" in found and "SRNAS_DEADLINE_S" in found  # the grep sees the code
    missing = {name: where for name, where in found.items() if not re.search(rf"\b{name}\b", page)}
    assert missing == {}, "SRNAS_* names in the code (first file) that docs/serving.md does not mention"


# ---- the figure ------------------------------------------------------------------------------
def test_figure_script_draws_bicubic_output_and_original(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "before-after.png"
    assert figures.main(["--box", "80", "170", "64", "--zoom", "2", "--threads", "1", "-o", str(out)]) == 0
    img = Image.open(out)
    panel = 64 * 2
    assert img.size == (3 * panel + 2 * figures.GAP, figures.LABEL_H + panel)
    images, labels = figures.panels("astronaut", (80, 170, 64), threads=1)
    assert [im.shape for im in images] == [(64, 64, 3)] * 3
    assert labels[0].startswith("bicubic") and "srnas default" in labels[1] and labels[2] == "original"
    psnr = [float(re.search(r"([\d.]+) dB", label).group(1)) for label in labels[:2]]
    assert psnr[1] > psnr[0], f"the model's panel should beat bicubic: {labels}"


def test_figure_image_must_come_from_the_test_split():
    pytest.importorskip("skimage")
    with pytest.raises(SystemExit, match="test-split"):
        figures.panels("chelsea", (0, 0, 64))  # a training image


def test_committed_figure_is_small_and_three_panels_wide():
    path = ROOT / "docs" / "images" / "before-after.png"
    assert path.stat().st_size < 300_000
    w, h = Image.open(path).size
    panel = h - figures.LABEL_H
    assert w == 3 * panel + 2 * figures.GAP
    assert "docs/images/before-after.png" in README.read_text()


# ---- the README's examples, against a real server ---------------------------------------------
@pytest.fixture(scope="module")
def readme_server(bento_home, tmp_path_factory):
    """A real `bentoml serve` of the shipped models (the default SRNAS_MODELS), as tests/test_serving.py starts."""
    from serving.launch import serving

    with serving({"BENTOML_HOME": str(bento_home)}, log=tmp_path_factory.mktemp("log") / "serve.log") as srv:
        yield srv


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A folder holding `photo.jpg`, the file the README's examples upload (the bundled 64x64 sample)."""
    Image.open(SAMPLE).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    return tmp_path


def assert_2x_png(path: Path, source: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG"), data[:200]
    w, h = Image.open(source).size
    assert Image.open(io.BytesIO(data)).size == (2 * w, 2 * h)


@pytest.mark.slow
def test_readme_curl_commands_run(readme_server, workdir):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    commands = [line for line in marked_block("curl").splitlines() if line.strip()]
    assert commands and all(line.startswith("curl ") and README_URL in line for line in commands)
    for line in commands:
        r = subprocess.run(["bash", "-c", line.replace(README_URL, readme_server.url)], cwd=workdir,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out = re.search(r"-o (\S+)", line).group(1)
        assert_2x_png(workdir / out, workdir / "photo.jpg")


@pytest.mark.slow
def test_readme_python_client_runs(readme_server, workdir):
    code = marked_block("python-client")
    assert README_URL in code and "bentoml.SyncHTTPClient" in code and "client.upscale(image=Path(" in code
    script = workdir / "client.py"
    script.write_text(code.replace(README_URL, readme_server.url))
    r = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_2x_png(workdir / "photo-x2.png", workdir / "photo.jpg")
