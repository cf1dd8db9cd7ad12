"""The load level of a step (workers of one server in a network call at once) and the slowdown curve that
turns the idle prediction into the prediction at that load; no timing assertions."""
import numpy as np

from serving.busy import BusyBoard
from serving.prediction import shared, slowdown


def test_workers_of_one_server_see_each_others_calls(tmp_path):
    path = tmp_path / "board"
    a, b = BusyBoard(path, 1), BusyBoard(path, 2)
    assert a.count() == 0
    with a.busy() as load_a:
        assert load_a == 1 and b.count() == 1
        with b.busy() as load_b:
            assert load_b == 2
        assert a.count() == 1
    assert a.count() == b.count() == 0
    with a.busy():
        BusyBoard(path, 1)  # the replacement of a worker killed inside a call clears its mark
        assert b.count() == 0


def test_the_slowdown_curve_has_one_factor_per_load_level():
    calls = []

    def run(x, level):
        calls.append(x.shape)
        return x[:, :3] * 0

    curve = slowdown(run, 16, workers=3, calls=2)
    assert sorted(curve) == [1, 2, 3] and curve[1] == 1.0 and all(v >= 1.0 for v in curve.values())
    assert set(calls) == {(1, 6, 16, 16)} and len(calls) == 1 + 2 * (1 + 2 + 3)


def test_one_worker_measures_and_the_others_reuse_it(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    runs = []
    first, kept = shared(["slowdown", "model", 1, 2], lambda: runs.append(1) or {"1": 1.0, "2": float(np.float64(1.3))})
    again, kept2 = shared(["slowdown", "model", 1, 2], lambda: runs.append(1) or {})
    assert (kept, kept2) == (False, True) and again == first and runs == [1]
    other, kept3 = shared(["slowdown", "model", 1, 4], lambda: {"1": 1.0})  # another setting is measured anew
    assert kept3 is False and other == {"1": 1.0}
