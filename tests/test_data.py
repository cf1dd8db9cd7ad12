import numpy as np
import pytest
from PIL import Image

from models.imaging import bicubic_down, bicubic_up, to_float, to_rgb, to_uint8
from search.data import (BUILTIN_TEST, BUILTIN_TRAIN, BUILTIN_VAL, FLAT_STD, SPLITS, CropSampler, DataError, Pair, builtin_pairs,
                         crop, eval_crops, folder_pairs, load_pairs, load_rgb)
from tests.conftest import rgb


def test_builtin_splits_are_disjoint_by_image_and_alpha_is_part_of_train():
    splits = {name: builtin_pairs(name) for name in SPLITS}
    names = {k: {p.name for p in v} for k, v in splits.items()}
    assert names["alpha"] < names["train"]
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert names[a].isdisjoint(names[b]), (a, b)
    assert {"motorcycle_left", "motorcycle_right"} <= names["train"]  # both views of one scene on one side
    assert len(splits["train"]) == len(BUILTIN_TRAIN) and len(splits["test"]) == len(BUILTIN_TEST) >= 4
    for p in [p for v in splits.values() for p in v]:
        assert p.hr.shape[0] == 3 and p.hr.shape[1] == 2 * p.lr.shape[1] and p.hr.shape[2] == 2 * p.lr.shape[2]
        assert min(p.hr.shape[1:]) >= 128  # every image gives at least one evaluation crop
    grey = [p for p in splits["test"] if np.abs(p.hr[0] - p.hr[1]).mean() == 0]
    assert grey and len(grey) < len(splits["test"])  # grey images replicated to RGB beside colour photos


def test_an_unknown_split_is_a_user_error():
    with pytest.raises(DataError, match="unknown split"):
        builtin_pairs("holdout")


def test_crops_match_the_full_image_upsample():
    pair = builtin_pairs("val")[1]
    full = bicubic_up(pair.lr)
    for y, x in [(0, 0), (100, 60), (pair.hr.shape[1] - 128, pair.hr.shape[2] - 128)]:
        lr, bic, hr = crop(pair, y, x, 128)
        assert lr.shape == (3, 64, 64) and hr.shape == (3, 128, 128)
        assert np.array_equal(bic, full[:, y:y + 128, x:x + 128])
        assert np.array_equal(hr, pair.hr[:, y:y + 128, x:x + 128])


def test_random_crops_keep_lr_and_hr_aligned_under_augmentation():
    s = CropSampler(builtin_pairs("val"), 128, seed=3)
    lr, bic, hr = s.batch(6)
    assert lr.shape == (6, 3, 64, 64) and bic.shape == hr.shape == (6, 3, 128, 128)
    for i in range(6):  # downscaling the HR crop gives the LR crop away from the crop border
        err = np.abs(bicubic_down(hr[i]) - lr[i])[:, 4:-4, 4:-4]
        assert err.mean() < 0.01


def test_sampler_state_round_trip():
    s = CropSampler(builtin_pairs("val"), 64, seed=1)
    state = s.state()
    a = s.batch(2)
    s.set_state(state)
    b = s.batch(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def _write(path, arr):
    Image.fromarray(arr).save(path)


def test_div2k_layout_with_and_without_lr_folder(tmp_path):
    hr_dir, lr_dir = tmp_path / "DIV2K_train_HR", tmp_path / "X2"
    hr_dir.mkdir(), lr_dir.mkdir()
    _write(hr_dir / "0001.png", rgb(160, 200, 1))
    _write(hr_dir / "0002.png", rgb(140, 150, 2))
    lr1, lr2 = rgb(80, 100, 3), rgb(70, 75, 4)
    _write(lr_dir / "0001x2.png", lr1)
    _write(lr_dir / "0002x2.png", lr2)
    pairs = folder_pairs(hr_dir, lr_dir)
    assert [p.name for p in pairs] == ["0001", "0002"]
    assert np.array_equal(to_uint8(pairs[0].lr), lr1)  # the given LR, not a bicubic downscale
    assert pairs[1].hr.shape == (3, 140, 150)
    bic_pairs = folder_pairs(hr_dir)
    assert np.allclose(bic_pairs[0].lr, bicubic_down(to_float(rgb(160, 200, 1))))
    assert load_pairs(str(hr_dir), "train")[0].name == "0001"


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        folder_pairs(tmp_path / "missing")
    with pytest.raises(DataError, match="no images"):
        folder_pairs(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="not a readable image"):
        folder_pairs(tmp_path)
    _write(tmp_path / "a.png", rgb(64, 64))
    (tmp_path / "lr").mkdir()
    with pytest.raises(DataError, match="no LR image"):
        folder_pairs(tmp_path, tmp_path / "lr")


def test_load_rgb_converts_modes_and_refuses_tiny(tmp_path):
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((16, 20), 77, np.uint8), "L").save(gray)
    assert load_rgb(gray).shape == (16, 20, 3) and load_rgb(gray)[0, 0, 2] == 77
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent -> white
    assert tuple(to_rgb(rgba)[0, 0]) == (255, 255, 255)
    pal = Image.new("P", (10, 10))
    pal.putpalette([0, 200, 0] * 256)
    assert tuple(to_rgb(pal)[0, 0]) == (0, 200, 0)
    small = tmp_path / "s.png"
    _write(small, rgb(7, 30))
    with pytest.raises(DataError, match="at least 8"):
        load_rgb(small)


def test_eval_crops_are_fixed():
    a = eval_crops(builtin_pairs("val"), per_image=4)
    b = eval_crops(builtin_pairs("val"), per_image=4)
    n = 4 * len(BUILTIN_VAL)
    assert len(a) == n and all(np.array_equal(x[3], y[3]) for x, y in zip(a, b))
    assert len({x[0] for x in a}) == n


def test_eval_crops_leave_out_flat_regions():
    # The retina photo's black corners are reproduced exactly by bicubic: a crop there scores infinite PSNR.
    crops = eval_crops(builtin_pairs("val"), per_image=8)
    assert len(crops) == 8 * len(BUILTIN_VAL)
    assert all(hr.std() >= FLAT_STD for *_, hr in crops)
    assert all(float(((bic - hr) ** 2).mean()) > 0 for _, _, bic, hr in crops)
    flat = Pair("flat", np.zeros((3, 128, 128), np.float32), np.zeros((3, 64, 64), np.float32))
    assert eval_crops([flat], per_image=4) == []
