"""Paired data sets, the embedded default and training crops (restorekit.data.pairs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restorekit.data import (
    EMBEDDED_PHOTOS,
    EmbeddedPairs,
    FolderPairs,
    TrainCrops,
    check_min_size,
    open_pairs,
    write_image,
)
from restorekit.errors import DataError, ImageReadError, UsageError


def _write_pair(root, name, size=(8, 12), seed=0, high_size=None):
    rng = np.random.default_rng(seed)
    h, w = size
    write_image(root / "low" / name, rng.random((h, w, 3)) * 0.1)
    hh, hw = high_size or size
    write_image(root / "high" / name, rng.random((hh, hw, 3)))


@pytest.fixture
def lol(tmp_path):
    root = tmp_path / "LOL"
    for i in range(4):
        _write_pair(root / "our485", f"{i + 10}.png", seed=i)
    for i in range(2):
        _write_pair(root / "eval15", f"{i + 1}.png", seed=100 + i)
    return root


# -- layouts ------------------------------------------------------------------------------------
def test_lol_layout_both_splits(lol):
    train = open_pairs(lol, "train")
    test = open_pairs(lol, "test")
    assert train.names == ["10", "11", "12", "13"] and len(train) == 4
    assert test.names == ["1", "2"]
    assert test.describe() == f"LOL eval15: 2 pairs in {lol / 'eval15'}"
    low, high = test.pair(1)
    assert low.shape == high.shape == (8, 12, 3) and low.dtype == np.float32
    assert low.mean() < high.mean()


def test_low_high_layout_serves_both_splits(lol):
    folder = lol / "eval15"
    assert open_pairs(folder, "train").names == open_pairs(folder, "test").names == ["1", "2"]


def test_train_test_layout_case_insensitive(tmp_path):
    _write_pair(tmp_path / "Train", "a.png")
    _write_pair(tmp_path / "Train", "b.png")
    _write_pair(tmp_path / "test", "c.png")
    assert open_pairs(tmp_path, "train").names == ["a", "b"]
    assert open_pairs(tmp_path, "test").names == ["c"]


def test_bad_split(lol):
    with pytest.raises(UsageError, match="split"):
        open_pairs(lol, "valid")
    with pytest.raises(UsageError, match="split"):
        open_pairs(None, "validation")


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        open_pairs(tmp_path / "nowhere")


def test_unknown_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError) as info:
        open_pairs(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "low/" in message and "our485" in message
    assert "\n" not in message


def test_lol_layout_missing_split(tmp_path):
    _write_pair(tmp_path / "our485", "1.png")
    assert len(open_pairs(tmp_path, "train")) == 1
    with pytest.raises(DataError, match="eval15"):
        open_pairs(tmp_path, "test")


def test_empty_folder(tmp_path):
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    with pytest.raises(DataError, match="no images") as info:
        open_pairs(tmp_path)
    assert str(tmp_path / "low") in str(info.value)


# -- bad pairs ----------------------------------------------------------------------------------
def test_missing_twins(tmp_path):
    _write_pair(tmp_path, "ok.png")
    write_image(tmp_path / "low" / "lonely_low.png", np.zeros((8, 12, 3)))
    with pytest.raises(DataError, match="lonely_low.png"):
        open_pairs(tmp_path)
    (tmp_path / "low" / "lonely_low.png").unlink()
    write_image(tmp_path / "high" / "lonely_high.png", np.zeros((8, 12, 3)))
    with pytest.raises(DataError, match="lonely_high.png"):
        open_pairs(tmp_path)


def test_size_mismatch_names_both_files_and_sizes(tmp_path):
    _write_pair(tmp_path, "odd.png", size=(8, 12), high_size=(10, 12))
    pairs = open_pairs(tmp_path)
    with pytest.raises(DataError) as info:
        pairs.pair(0)
    message = str(info.value)
    assert str(tmp_path / "low" / "odd.png") in message
    assert str(tmp_path / "high" / "odd.png") in message
    assert "8x12" in message and "10x12" in message


def test_corrupt_file_in_pair(tmp_path):
    _write_pair(tmp_path, "bad.png")
    (tmp_path / "high" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="bad.png"):
        open_pairs(tmp_path).pair(0)


def test_skip_bad(tmp_path, capsys):
    _write_pair(tmp_path, "good.png")
    _write_pair(tmp_path, "odd.png", high_size=(10, 12))
    write_image(tmp_path / "low" / "lonely.png", np.zeros((8, 12, 3)))
    _write_pair(tmp_path, "broken.png")
    (tmp_path / "low" / "broken.png").write_bytes(b"garbage")
    pairs = open_pairs(tmp_path, skip_bad=True)
    assert pairs.names == ["good"]
    assert "3 skipped" in pairs.describe()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(ln.startswith("restorekit: warning: skipping ") for ln in lines)
    text = "\n".join(lines)
    assert "lonely.png" in text and "odd.png" in text and "broken.png" in text
    assert pairs.pair(0)[0].shape == (8, 12, 3)


def test_duplicate_stems(tmp_path):
    _write_pair(tmp_path, "a.png")
    write_image(tmp_path / "low" / "a.bmp", np.zeros((8, 12, 3)))
    with pytest.raises(DataError, match=r"a\.bmp"):
        open_pairs(tmp_path)


def test_cache_returns_fresh_arrays(tmp_path, monkeypatch):
    _write_pair(tmp_path, "a.png")
    pairs = FolderPairs(tmp_path / "low", tmp_path / "high")
    low, high = pairs.pair(0)
    low[:] = 5.0
    import restorekit.data.pairs as pairs_module

    def no_read(path):
        raise AssertionError("read again instead of using the cache")

    monkeypatch.setattr(pairs_module, "read_image", no_read)
    low2, high2 = pairs.pair(0)
    assert low2.max() <= 1.0 and np.array_equal(high, high2)


# -- the embedded default ---------------------------------------------------------------------
def test_embedded_default_splits_are_disjoint():
    train, test = open_pairs(None, "train"), open_pairs(None, "test")
    assert isinstance(train, EmbeddedPairs)
    assert set(train.names).isdisjoint(test.names)
    assert test.names == ["coffee", "chelsea"] == list(EMBEDDED_PHOTOS["test"])
    assert "cat" not in train.names
    assert "test" in test.describe() and "coffee" in test.describe()


def test_embedded_images_are_small_and_valid():
    for split in ("train", "test"):
        pairs = EmbeddedPairs(split)
        for i in range(len(pairs)):
            low, high = pairs.pair(i)
            assert low.shape == high.shape and max(high.shape[:2]) <= 600
            assert low.dtype == high.dtype == np.float32
            assert low.min() >= 0 and high.max() <= 1
            assert low.mean() < 0.5 * high.mean()


def test_embedded_test_split_is_fixed():
    a = EmbeddedPairs("test", seed=0).pair(0)
    b = EmbeddedPairs("test", seed=7).pair(0, np.random.default_rng(123))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_embedded_train_determinism():
    pairs = EmbeddedPairs("train", seed=0)
    fixed1 = pairs.pair(1)[0]
    assert np.array_equal(fixed1, EmbeddedPairs("train", seed=0).pair(1)[0])
    assert not np.array_equal(fixed1, EmbeddedPairs("train", seed=1).pair(1)[0])
    r1 = pairs.pair(1, np.random.default_rng(5))[0]
    r2 = pairs.pair(1, np.random.default_rng(5))[0]
    r3 = pairs.pair(1, np.random.default_rng(6))[0]
    assert np.array_equal(r1, r2) and not np.array_equal(r1, r3)


def test_embedded_high_is_not_shared_mutable():
    pairs = EmbeddedPairs("test")
    _, high = pairs.pair(0)
    high[:] = 0
    assert pairs.pair(0)[1].max() > 0


# -- training crops -----------------------------------------------------------------------------
def test_train_crops_shapes_and_length(lol):
    crops = TrainCrops(open_pairs(lol, "train"), 6, samples_per_epoch=10)
    assert len(crops) == 10
    item = crops[7]
    assert item["low"].shape == item["high"].shape == (3, 6, 6)
    assert item["low"].dtype == torch.float32 and item["name"] == "13"  # 7 % 4 == 3
    assert len(TrainCrops(open_pairs(lol, "train"), 6)) == 4
    with pytest.raises(IndexError):
        crops[10]


def test_train_crops_reproducible_by_seed_epoch_index():
    pairs = EmbeddedPairs("train")
    a = TrainCrops(pairs, 64, samples_per_epoch=6, seed=3)
    b = TrainCrops(EmbeddedPairs("train"), 64, samples_per_epoch=6, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    first = [a[i] for i in range(6)]
    for i in reversed(range(6)):  # any order, fresh object: same items
        assert torch.equal(first[i]["low"], b[i]["low"])
        assert torch.equal(first[i]["high"], b[i]["high"])
    b.set_epoch(3)
    assert not torch.equal(first[0]["low"], b[0]["low"])
    c = TrainCrops(pairs, 64, samples_per_epoch=6, seed=4)
    c.set_epoch(2)
    assert not torch.equal(first[0]["high"], c[0]["high"])


def test_train_crops_are_aligned(lol):
    pairs = open_pairs(lol, "test")
    crops = TrainCrops(pairs, 5, hflip=False)
    for epoch in range(3):
        crops.set_epoch(epoch)
        item = crops[0]
        low, high = pairs.pair(0)
        h = item["high"].permute(1, 2, 0).numpy()
        found = [(y, x) for y in range(4) for x in range(8)
                 if np.array_equal(high[y:y + 5, x:x + 5], h)]
        assert len(found) == 1
        y, x = found[0]
        assert np.array_equal(low[y:y + 5, x:x + 5], item["low"].permute(1, 2, 0).numpy())


def test_train_crops_preprocess_applies_to_low_only(lol):
    crops = TrainCrops(open_pairs(lol, "train"), 4, preprocess=lambda im: np.ones_like(im))
    item = crops[0]
    assert torch.all(item["low"] == 1) and not torch.all(item["high"] == 1)


def test_train_crops_with_dataloader(lol):
    crops = TrainCrops(open_pairs(lol, "train"), 4, samples_per_epoch=8)
    batch = next(iter(torch.utils.data.DataLoader(crops, batch_size=4)))
    assert batch["low"].shape == (4, 3, 4, 4) and len(batch["name"]) == 4


def test_crop_larger_than_image(lol):
    crops = TrainCrops(open_pairs(lol, "train"), 10)
    with pytest.raises(DataError) as info:
        crops[0]
    message = str(info.value)
    assert "10.png" in message and "8x12" in message and "10x10" in message
    embedded = TrainCrops(EmbeddedPairs("test"), 400)
    with pytest.raises(DataError, match="chelsea"):
        embedded[1]


def test_bad_crop_size(lol):
    with pytest.raises(UsageError, match="crop size"):
        TrainCrops(open_pairs(lol, "train"), 0)


def test_check_min_size():
    check_min_size(np.zeros((8, 9, 3)), 8, "x")
    with pytest.raises(DataError, match=r"photo\.png.*8x9"):
        check_min_size(np.zeros((8, 9, 3)), 9, "photo.png")


def test_validation_split_is_carved_from_train_and_seeded(lol):
    from restorekit.data import Holdout

    train = open_pairs(lol, "train")
    val = open_pairs(lol, "val")
    rest = open_pairs(lol, "train", holdout=Holdout())
    assert len(val) >= 1 and len(val) + len(rest) == len(train)
    assert not set(val.names) & set(rest.names)
    assert set(val.names) | set(rest.names) == set(train.names)
    assert open_pairs(lol, "val").names == val.names  # the same pairs every time
    assert Holdout(seed=1).indices(100) != Holdout(seed=0).indices(100)
    assert len(Holdout(0.2).indices(100)) == 20 and len(Holdout(0.5).indices(2)) == 1
    with pytest.raises(UsageError, match="--val-fraction"):
        Holdout(1.5)


def test_embedded_validation_is_fixed_and_never_a_test_photo():
    import numpy as np

    from restorekit.data import EMBEDDED_PHOTOS, Holdout

    val = open_pairs(None, "val")
    assert val.names == ["astronaut"]  # the documented default (Holdout(0.2, seed 0))
    assert not set(val.names) & set(EMBEDDED_PHOTOS["test"])
    a, _ = val.pair(0, np.random.default_rng(1))
    b, _ = open_pairs(None, "val", seed=7).pair(0, np.random.default_rng(2))
    assert np.array_equal(a, b)  # fixed lows: no augmentation, independent of the seed
    rest = open_pairs(None, "train", holdout=Holdout())
    assert "astronaut" not in rest.names and len(rest) == 4
