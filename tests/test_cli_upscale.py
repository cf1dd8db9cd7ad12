"""`srnas upscale` on files, folders and glob patterns, run as a user would (the installed console script)."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import ROOT, rgb, srnas_cmd


def _image(path: Path, h: int = 20, w: int = 24, seed: int = 0, **save) -> Path:
    Image.fromarray(rgb(h, w, seed)).save(path, **save)
    return path


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_folder_upscales_its_images_and_skips_the_rest(run_srnas, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "a.png")
    _image(src / "b.jpg", seed=1)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"  # created by the command
    proc = run_srnas("upscale", src, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg"]  # each keeps its stem and its format
    assert Image.open(out / "a.png").size == (48, 40) and Image.open(out / "b.jpg").format == "JPEG"
    skipped = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "notes.txt: not a readable image" in skipped[0], proc.stderr
    _no_traceback(proc)


def test_a_folder_without_images_is_exit_2(run_srnas, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("text")
    (src / "b.png").write_bytes(b"\x89PNG not really")
    proc = run_srnas("upscale", src, "-o", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("skipped") == 2 and "no image written" in proc.stderr.splitlines()[-1], proc.stderr
    _no_traceback(proc)


def test_a_quoted_glob_pattern_is_expanded_and_format_applies(run_srnas, tmp_path):
    for name in ("x1.png", "x2.png", "y.png"):
        _image(tmp_path / name, seed=len(name))
    out = tmp_path / "out"
    proc = run_srnas("upscale", str(tmp_path / "x*.png"), "-o", out, "--format", "webp")  # no shell: as quoted
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x1.webp", "x2.webp"]
    nothing = run_srnas("upscale", str(tmp_path / "z*.png"), "-o", out)
    assert nothing.returncode == 2 and "no file matches" in nothing.stderr, nothing.stderr


def test_an_output_that_would_overwrite_an_input_is_refused(run_srnas, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    a = _image(src / "a.png")
    before = a.read_bytes()
    for args in ([src, "-o", src], [a, "-o", a], [a, src / "b.png", "-o", src]):
        _image(src / "b.png", seed=2)
        proc = run_srnas("upscale", *args)
        assert proc.returncode == 2 and "would overwrite the input" in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr
    assert a.read_bytes() == before


def test_quality_changes_a_jpeg_and_is_refused_for_png(run_srnas, photo, tmp_path):
    sizes = {}
    for q in (10, 95):
        out = tmp_path / f"q{q}.jpg"
        proc = run_srnas("upscale", photo, "-o", out, "--quality", q)
        assert proc.returncode == 0, proc.stderr
        sizes[q] = out.stat().st_size
    assert sizes[10] < sizes[95] / 2, sizes
    for args, message in ((["-o", tmp_path / "x.png", "--quality", "80"], "applies to JPEG and WebP"),
                          (["-o", tmp_path / "x.jpg", "--quality", "0"], "1..100")):
        proc = run_srnas("upscale", photo, *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        _no_traceback(proc)
    assert not (tmp_path / "x.png").exists()


def test_rgba_keeps_its_alpha_upscaled_bicubically(run_srnas, tmp_path):
    h, w = 20, 24
    alpha = np.zeros((h, w), np.uint8)
    alpha[4:16, 6:18] = 255
    alpha[:, :3] = 128
    src = tmp_path / "logo.png"
    Image.fromarray(np.dstack([rgb(h, w), alpha])).save(src)
    proc = run_srnas("upscale", src, "-o", tmp_path / "out.png", "--steps", "1")
    assert proc.returncode == 0, proc.stderr
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "RGBA" and out.size == (2 * w, 2 * h)
    expected = np.asarray(Image.fromarray(alpha).resize((2 * w, 2 * h), Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(out)[..., 3], expected)
    jpeg = run_srnas("upscale", src, "-o", tmp_path / "out.jpg", "--steps", "1")  # composited on white
    assert jpeg.returncode == 0 and Image.open(tmp_path / "out.jpg").mode == "RGB", jpeg.stderr


def test_onnxruntime_is_the_default_and_torch_gives_nearly_the_same_pixels(run_srnas, photo, tmp_path):
    runs = {}
    for name, extra in (("default", []), ("torch", ["--backend", "torch"])):
        out = tmp_path / f"{name}.png"
        proc = run_srnas("upscale", photo, "-o", out, "--steps", "2", "--seed", "4", *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = (proc.stdout, np.asarray(Image.open(out)).astype(int))
    assert "onnxruntime" in runs["default"][0] and "torch" in runs["torch"][0]
    diff = np.abs(runs["default"][1] - runs["torch"][1])
    assert diff.mean() < 0.1 and diff.max() <= 2, (diff.mean(), diff.max())


def test_without_torch_onnxruntime_upscales_and_the_torch_backend_is_one_line(photo, tmp_path):
    """As in the serving install: torch cannot be imported (nor tqdm, which is part of the same extra)."""
    code = ("import sys\n"
            "sys.modules['torch'] = sys.modules['tqdm'] = None  # `import torch` now fails as if not installed\n"
            "from srnas.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    for backend, rc, message in (([], 0, "onnxruntime-fp32"), (["--backend", "torch"], 2, "torch is missing")):
        proc = subprocess.run([sys.executable, "-c", code, "upscale", str(photo), "-o", str(tmp_path / "o.png"),
                               *backend], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == rc and message in proc.stdout + proc.stderr, proc.stderr
        _no_traceback(proc)


def _on_a_terminal(*args: str, timeout: float = 300) -> tuple[int, str]:
    """Run the command with stderr on a pseudo-terminal; (exit code, what the terminal showed)."""
    master, slave = pty.openpty()
    # a terminal 100 columns wide (a new pseudo-terminal has none, and tqdm draws a bar to fit the width)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([*srnas_cmd(), *map(str, args)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave, cwd=ROOT)
    os.close(slave)
    shown, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the command closed the terminal: it exited
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=60), shown.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_a_progress_bar_on_a_terminal_only(run_srnas, photo, tmp_path):
    code, shown = _on_a_terminal("upscale", photo, "-o", tmp_path / "tty.png", "--steps", "2")
    assert code == 0, shown
    assert "tile-step" in shown and "photo.png" in shown, shown
    code, shown = _on_a_terminal("upscale", photo, "-o", tmp_path / "quiet.png", "--steps", "2", "--no-progress")
    assert code == 0 and "tile-step" not in shown, shown
    piped = run_srnas("upscale", photo, "-o", tmp_path / "piped.png", "--steps", "2")
    assert piped.returncode == 0 and "tile-step" not in piped.stderr and "%|" not in piped.stderr, piped.stderr


def test_the_pipeline_lets_its_stages_show_progress_only_when_asked():
    from srnas.pipeline import PipelineConfig, plan

    quiet, shown = plan(PipelineConfig(quick=True)), plan(PipelineConfig(quick=True, progress=True))
    assert not any("--no-progress" in stage.argv for stage in shown)
    assert all("--no-progress" in stage.argv for stage in quiet if stage.argv[0] != "deploy")
    assert [s.name for s in quiet] == [s.name for s in shown]
