"""Data loaders on small files written here in each real on-disk format (no downloads)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from _formats import (  # noqa: E402  (tests/ is on sys.path under pytest)
    COLOURS,
    WNIDS,
    assert_colours_match,
    colour_of,
    make_cifar10,
    make_cifar100,
    make_downsampled,
    make_imagenet,
    save_jpeg,
    write_pickle,
)
from PIL import Image

from ccsearch.data import (
    available_sources,
    load_cache,
    load_data,
    prepare_imagenet_cache,
)
from ccsearch.data.cache import sha256_file
from ccsearch.errors import UserError

# ---------------------------------------------------------------- registry and ProxyData


def test_registry_lists_all_sources() -> None:
    assert set(available_sources()) == {
        "cluttered-digits",
        "imagenet",
        "imagenet-downsampled",
        "cifar10",
        "cifar100",
        "digits",
        "glyphs",
    }


def test_unknown_source_lists_known_ones() -> None:
    with pytest.raises(UserError, match="unknown data source 'mnist'.*imagenet.*digits"):
        load_data("mnist", resolution=32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resolution": 0}, "resolution"),
        ({"resolution": 32, "classes": 0}, "classes"),
        ({"resolution": 32, "images_per_class": -1}, "images_per_class"),
        ({"resolution": 32, "seed": -3}, "seed"),
        ({"resolution": True}, "resolution"),
        ({"resolution": 32, "classes": 11}, "classes=11 but digits has only 10"),
    ],
)
def test_bad_option_values(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_data("digits", **kwargs)


# ------------------------------------------------------------------------------- digits


def test_digits_smoke_test_proxy() -> None:
    data = load_data("digits", resolution=16)
    assert data.train_x.shape[1:] == (16, 16, 3) and data.train_x.dtype == np.uint8
    assert data.train_y.dtype == np.int64
    assert len(data.train_x) + len(data.val_x) == 1797
    assert 0.75 < len(data.train_x) / 1797 < 0.85
    assert data.num_classes == 10 and data.resolution == 16
    assert data.class_names == [str(d) for d in range(10)]
    assert data.is_smoke_test and "not ImageNet" in data.description
    assert data.train_x.max() == 255
    assert np.array_equal(data.train_x[..., 0], data.train_x[..., 2])  # grey replicated
    assert set(np.bincount(data.val_y)) <= {35, 36, 37}  # stratified

    again = load_data("digits", resolution=16)
    assert np.array_equal(again.train_x, data.train_x) and np.array_equal(again.val_y, data.val_y)
    other = load_data("digits", resolution=16, seed=1)
    assert not np.array_equal(other.val_x, data.val_x)


def test_digits_takes_no_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=str(tmp_path)):
        load_data("digits", tmp_path, resolution=16)


# ----------------------------------------------------------------------------- imagenet


@pytest.mark.parametrize("flat_val", [None, "txt", "csv"])
def test_imagenet_folders(tmp_path: Path, flat_val: str | None) -> None:
    root = make_imagenet(tmp_path / "imagenet", flat_val=flat_val)
    data = load_data("imagenet", root, resolution=16)
    assert data.class_names == WNIDS[:3]
    assert data.train_x.shape == (12, 16, 16, 3)  # the broken file is skipped
    assert data.val_x.shape == (6, 16, 16, 3)
    assert data.train_x.dtype == np.uint8 and data.val_y.dtype == np.int64
    assert list(np.bincount(data.train_y)) == [4, 4, 4]
    assert list(np.bincount(data.val_y)) == [2, 2, 2]
    assert "1 unreadable" in data.description and not data.is_smoke_test
    assert_colours_match(data)  # also shows the black side bars were cropped away


def test_imagenet_grey_and_cmyk_become_rgb(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path, n_classes=2, train_per_class=1, val_per_class=1, corrupt=False)
    Image.new("L", (40, 40), 128).save(root / "train" / WNIDS[0] / "grey.JPEG")
    Image.new("CMYK", (40, 40), (0, 0, 0, 0)).save(root / "train" / WNIDS[1] / "cmyk.JPEG")
    data = load_data("imagenet", root, resolution=8)
    assert data.train_x.shape == (4, 8, 8, 3)
    grey, cmyk = data.train_x[0], data.train_x[2]  # sorted: grey < n01440764_0, cmyk < n01443537_0
    np.testing.assert_allclose(colour_of(grey), (128, 128, 128), atol=2)
    np.testing.assert_allclose(colour_of(cmyk), (255, 255, 255), atol=2)  # no ink is white


def test_imagenet_class_subset_and_cap(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path, n_classes=4, train_per_class=5, val_per_class=1, corrupt=False)
    picks = {
        seed: load_data("imagenet", root, resolution=8, classes=2, images_per_class=3, seed=seed)
        for seed in range(6)
    }
    first = picks[0]
    assert first.num_classes == 2 and first.class_names == sorted(first.class_names)
    assert list(np.bincount(first.train_y)) == [3, 3]
    assert list(np.bincount(first.val_y)) == [1, 1]  # val is never capped
    assert_colours_match(first)
    again = load_data("imagenet", root, resolution=8, classes=2, images_per_class=3, seed=0)
    assert again.class_names == first.class_names
    assert np.array_equal(again.train_x, first.train_x)
    assert len({tuple(p.class_names) for p in picks.values()}) > 1


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("no_train", "not an ImageNet folder"),
        ("no_labels", "needs a labels file"),
        ("bad_labels", "expected '<filename> <wnid>'"),
        ("unlabelled", "has no entry in the labels file"),
    ],
)
def test_imagenet_errors(tmp_path: Path, setup: str, match: str) -> None:
    root = tmp_path / "data"
    if setup == "empty":
        root.mkdir()
    elif setup == "no_train":
        (root / "val").mkdir(parents=True)
    elif setup != "missing":
        make_imagenet(root, n_classes=1, train_per_class=1, val_per_class=1, flat_val="txt")
        if setup == "no_labels":
            (root / "val_labels.txt").unlink()
        elif setup == "bad_labels":
            (root / "val_labels.txt").write_text("only-one-column\n")
        elif setup == "unlabelled":
            save_jpeg(root / "val" / "stray.JPEG", COLOURS[0])
    with pytest.raises(UserError, match=match) as err:
        load_data("imagenet", root, resolution=8)
    assert str(root) in str(err.value)


# ------------------------------------------------------------------------- cache


def test_cache_round_trip(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path / "imagenet", train_per_class=22)  # 66 images: uses the pool
    out = tmp_path / "cache"
    assert prepare_imagenet_cache(root, out, resolution=16, workers=2, progress=False) == out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["count"] == 1
    assert manifest["skipped"]["paths"] == [str(root / "train" / WNIDS[0] / "broken.JPEG")]
    assert manifest["counts"] == {"train": 66, "val": 6}
    assert manifest["class_names"] == WNIDS[:3] and manifest["resolution"] == 16
    for name, spec in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == spec["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "imagenet"]  # no temp dirs

    direct = load_data("imagenet", root, resolution=16)
    cached = load_data("imagenet", out, resolution=16)
    assert isinstance(cached.train_x, np.memmap) and not cached.train_x.flags.writeable
    for field in ("train_x", "train_y", "val_x", "val_y", "class_names"):
        assert np.array_equal(getattr(direct, field), getattr(cached, field)), field
    assert load_cache(out, verify=True).num_classes == 3

    smaller = load_data("imagenet", out, resolution=8, classes=2, images_per_class=5, seed=1)
    assert smaller.train_x.shape == (10, 8, 8, 3)
    assert_colours_match(smaller)
    with pytest.raises(UserError, match="cannot serve 32px"):
        load_data("imagenet", out, resolution=32)


def test_cache_subset_matches_direct_load(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path / "imagenet", n_classes=4, train_per_class=4, corrupt=False)
    opts = {"classes": 2, "images_per_class": 2, "seed": 3}
    out = prepare_imagenet_cache(
        root, tmp_path / "c", resolution=8, workers=1, progress=False, **opts
    )
    direct = load_data("imagenet", root, resolution=8, **opts)
    cached = load_data("imagenet", out, resolution=8, **opts)  # picking 2 of 2 keeps all
    assert cached.class_names == direct.class_names
    assert np.array_equal(cached.train_x, direct.train_x)
    assert np.array_equal(cached.val_y, direct.val_y)


def test_cache_overwrite_rules(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path / "imagenet", n_classes=2, train_per_class=1, corrupt=False)
    out = tmp_path / "cache"
    prepare_imagenet_cache(root, out, resolution=8, workers=1, progress=False)
    prepare_imagenet_cache(root, out, resolution=4, workers=1, progress=False)  # earlier cache: ok
    assert load_data("imagenet", out, resolution=4).resolution == 4

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=f"not a cache: {busy}"):
        prepare_imagenet_cache(root, busy, resolution=8, workers=1, progress=False)
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="already a prepared cache"):
        prepare_imagenet_cache(out, tmp_path / "again", resolution=8, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "cache", "imagenet"]


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("garbage_manifest", "corrupted cache manifest"),
        ("foreign_manifest", "corrupted cache manifest"),
        ("truncated", "truncated or corrupted"),
        ("missing_file", "cache file missing"),
        ("wrong_shape", "manifest says"),
        ("empty", "holds no train images"),  # as an older prepare-data wrote from bad JPEGs
    ],
)
def test_cache_corruption_is_a_user_error(tmp_path: Path, damage: str, match: str) -> None:
    root = make_imagenet(tmp_path / "imagenet", n_classes=2, train_per_class=2, corrupt=False)
    out = prepare_imagenet_cache(root, tmp_path / "cache", resolution=8, workers=1, progress=False)
    manifest = out / "manifest.json"
    if damage == "garbage_manifest":
        manifest.write_text("{ this is not json")
    elif damage == "foreign_manifest":
        manifest.write_text('{"format": "something-else"}')
    elif damage == "truncated":
        data = (out / "train_x.npy").read_bytes()
        (out / "train_x.npy").write_bytes(data[: len(data) // 2])
    elif damage == "missing_file":
        (out / "val_y.npy").unlink()
    elif damage == "wrong_shape":
        np.save(out / "val_y.npy", np.zeros(3, np.int64))
    elif damage == "empty":  # consistent files and manifest, no image
        np.save(out / "train_x.npy", np.zeros((0, 8, 8, 3), np.uint8))
        np.save(out / "train_y.npy", np.zeros(0, np.int64))
        meta = json.loads(manifest.read_text())
        meta["files"]["train_x.npy"]["shape"], meta["files"]["train_y.npy"]["shape"] = [0, 8, 8, 3], [0]
        for name in ("train_x.npy", "train_y.npy"):  # as that prepare-data hashed them
            meta["files"][name]["sha256"] = sha256_file(out / name)
        manifest.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=match) as err:
        load_data("imagenet", out, resolution=8)
    assert str(out) in str(err.value)


def test_cache_checksum_verification(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path / "imagenet", n_classes=1, train_per_class=2, corrupt=False)
    out = prepare_imagenet_cache(root, tmp_path / "cache", resolution=8, workers=1, progress=False)
    x = np.load(out / "train_x.npy")
    x[0, 0, 0, 0] ^= 0xFF
    np.save(out / "train_x.npy", x)  # same shape, different bytes
    load_cache(out)  # the cheap check cannot see it
    with pytest.raises(UserError, match="checksum mismatch"):
        load_cache(out, verify=True)
    with pytest.raises(UserError, match=f"checksum mismatch: {out / 'train_x.npy'}"):
        load_data("imagenet", out, resolution=8)  # what run, worker and train load


# -------------------------------------------------------------------- downsampled


def test_downsampled_npz(tmp_path: Path) -> None:
    root = make_downsampled(tmp_path / "imagenet32")
    data = load_data("imagenet-downsampled", root, resolution=8)
    assert data.train_x.shape == (12, 8, 8, 3) and data.val_x.shape == (4, 8, 8, 3)
    assert data.class_names == ["label_1", "label_2", "label_3", "label_4"]
    assert list(data.val_y) == [3, 2, 1, 0]  # 1-based labels become 0-based
    assert list(data.train_y) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    for x, y in ((data.train_x, data.train_y), (data.val_x, data.val_y)):
        assert np.all(x[..., 0] == (10 * (y + 1))[:, None, None])  # R plane first: CHW order
        assert np.all(x[..., 1] == 100) and np.all(x[..., 2] == 250)

    sub = load_data("imagenet-downsampled", root, resolution=16, classes=2, images_per_class=2)
    assert sub.train_x.shape == (4, 16, 16, 3) and sub.val_x.shape == (2, 16, 16, 3)
    names = [int(n.split("_")[1]) for n in sub.class_names]
    assert np.all(sub.train_x[:, 5, 5, 0] == 10 * np.array(names)[sub.train_y])
    again = load_data("imagenet-downsampled", root, resolution=16, classes=2, images_per_class=2)
    assert again.class_names == sub.class_names and np.array_equal(again.train_x, sub.train_x)


def test_downsampled_errors(tmp_path: Path) -> None:
    root = make_downsampled(tmp_path / "d")
    (root / "val_data.npz").unlink()
    with pytest.raises(UserError, match=f"not an Imagenet32/64 folder.*{root}"):
        load_data("imagenet-downsampled", root, resolution=8)
    (root / "val_data.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match=str(root / "val_data.npz")):
        load_data("imagenet-downsampled", root, resolution=8)
    np.savez(root / "val_data.npz", data=np.zeros((1, 100), np.uint8), labels=np.array([1]))
    with pytest.raises(UserError, match="not 3\\*S\\*S"):
        load_data("imagenet-downsampled", root, resolution=8)


# --------------------------------------------------------------------------- cifar


def test_cifar10_batches(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "cifar-10-batches-py", per_class_per_batch=2)
    data = load_data("cifar10", tmp_path, resolution=32)  # the parent folder is accepted too
    assert data.train_x.shape == (100, 32, 32, 3) and data.val_x.shape == (20, 32, 32, 3)
    assert data.class_names == [f"name{c}" for c in range(10)]
    assert np.all(data.train_x[:, :, :, 0] == data.train_y[:, None, None])
    assert np.all(data.train_x[..., 2] == 255)
    assert data.description.startswith("CIFAR-10 32px")

    capped = load_data(
        "cifar10", tmp_path / "cifar-10-batches-py", resolution=16, images_per_class=3
    )
    assert capped.train_x.shape == (30, 16, 16, 3) and list(np.bincount(capped.train_y)) == [3] * 10
    assert capped.val_x.shape == (20, 16, 16, 3)
    assert np.all(capped.train_x[..., 0] == capped.train_y[:, None, None])  # solid stays solid
    ids = {
        seed: tuple(
            load_data("cifar10", tmp_path, resolution=8, images_per_class=3, seed=seed).train_x[
                :, 0, 0, 1
            ]
        )
        for seed in (0, 0, 1, 2)
    }
    assert len(set(ids.values())) > 1


def test_cifar100_class_subset(tmp_path: Path) -> None:
    folder = make_cifar100(tmp_path / "cifar-100-python")
    full = load_data("cifar100", folder, resolution=32)
    assert full.num_classes == 100 and full.train_x.shape == (200, 32, 32, 3)
    sub = load_data("cifar100", folder, resolution=48, classes=10, seed=7)
    assert sub.num_classes == 10 and sub.train_x.shape == (20, 48, 48, 3)
    original = np.array([int(n[1:]) for n in sub.class_names])
    assert list(original) == sorted(original)
    assert np.all(sub.train_x[:, 0, 0, 0] == original[sub.train_y])  # labels line up
    assert np.all(sub.val_x[:, 0, 0, 0] == original[sub.val_y])
    assert (
        load_data("cifar100", folder, resolution=32, classes=10, seed=7).class_names
        == sub.class_names
    )
    assert (
        load_data("cifar100", folder, resolution=32, classes=10, seed=8).class_names
        != sub.class_names
    )


def test_cifar_errors(tmp_path: Path) -> None:
    jpegs = make_imagenet(tmp_path / "imagenet", n_classes=1, train_per_class=1, corrupt=False)
    with pytest.raises(UserError, match=f"not a CIFAR-10 python-pickle folder.*{jpegs}"):
        load_data("cifar10", jpegs, resolution=32)
    folder = make_cifar100(tmp_path / "c100")
    (folder / "test").write_bytes(b"garbage")
    with pytest.raises(UserError, match=str(folder / "test")):
        load_data("cifar100", folder, resolution=32)
    write_pickle(folder / "test", {b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [100]})
    with pytest.raises(UserError, match="labels outside"):
        load_data("cifar100", folder, resolution=32)


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path / "c10")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    write_pickle(folder / "data_batch_1", {b"data": Evil()})
    with pytest.raises(UserError, match="refusing to load"):
        load_data("cifar10", folder, resolution=32)
    assert not marker.exists()


@pytest.mark.parametrize("source", ["imagenet", "imagenet-downsampled", "cifar10", "cifar100"])
def test_missing_and_empty_roots(tmp_path: Path, source: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"does not exist: {missing}"):
        load_data(source, missing, resolution=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"is empty: {empty}"):
        load_data(source, empty, resolution=8)
    with pytest.raises(UserError, match="needs a data root"):
        load_data(source, None, resolution=8)


def test_cluttered_digits_are_one_fixed_data_set() -> None:
    """Generated, yet the same images on every load and for every subset seed: trials and
    machines see the same data, and the checksum says so."""
    a = load_data("cluttered-digits", resolution=32)
    b = load_data("cluttered-digits", resolution=32, seed=7)
    assert a.train_x.shape == (2 * 1437, 32, 32, 3) and a.val_x.shape == (5 * 360, 32, 32, 3)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.val_y, b.val_y)
    assert a.checksum() == b.checksum() != load_data("digits", resolution=32).checksum()
    assert a.is_smoke_test and "not ImageNet" in a.description
    assert np.bincount(a.val_y).tolist() == [5 * n for n in np.bincount(load_data(
        "digits", resolution=32).val_y).tolist()], "every held-out digit in 5 scenes"
    with pytest.raises(UserError, match="takes no root"):
        load_data("cluttered-digits", "/tmp", resolution=32)


def test_glyphs_are_one_fixed_data_set_with_every_class_balanced() -> None:
    """Generated from DATA_SEED alone: the same images on every load and for every subset
    seed, each class a distinct glyph, and a class subset keeps its images."""
    from ccsearch.data import glyphs

    a = load_data("glyphs", resolution=16)
    b = load_data("glyphs", resolution=16, seed=7)
    n_train, n_val = glyphs.CLASSES * glyphs.TRAIN_PER_CLASS, glyphs.CLASSES * glyphs.VAL_PER_CLASS
    assert a.train_x.shape == (n_train, 16, 16, 3) and a.val_x.shape == (n_val, 16, 16, 3)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.val_y, b.val_y)
    assert a.checksum() == b.checksum() != load_data("glyphs", resolution=24).checksum()
    assert a.is_smoke_test and "not ImageNet" in a.description and a.source == "glyphs"
    assert np.bincount(a.train_y).tolist() == [glyphs.TRAIN_PER_CLASS] * glyphs.CLASSES
    assert np.bincount(a.val_y).tolist() == [glyphs.VAL_PER_CLASS] * glyphs.CLASSES
    # Each class is its own glyph: a class's mean image is nearer its own held-out mean
    # than any other class's (what a linear read-out of the ink alone can already use).
    ink = lambda x: x.astype(np.float32).max(axis=3) - x.astype(np.float32).min(axis=(1, 2, 3))[:, None, None]  # noqa: E731
    train_means = np.stack([ink(a.train_x[a.train_y == k]).mean(0) for k in range(a.num_classes)])
    val_means = np.stack([ink(a.val_x[a.val_y == k]).mean(0) for k in range(a.num_classes)])
    distances = ((val_means[:, None] - train_means[None]) ** 2).sum(axis=(2, 3))
    assert (distances.argmin(axis=1) == np.arange(a.num_classes)).all()
    # No training image is repeated (every render is fresh), and none is in the held-out set.
    assert len({x.tobytes() for x in a.train_x} | {x.tobytes() for x in a.val_x}) == n_train + n_val
    subset = load_data("glyphs", resolution=16, classes=5, images_per_class=10)
    assert subset.num_classes == 5 and len(subset.train_y) == 50
    with pytest.raises(UserError, match="takes no root"):
        load_data("glyphs", "/tmp", resolution=16)


@pytest.mark.parametrize(
    ("field", "value"),
    [("resolution", True), ("classes", True), ("images_per_class", 2.0), ("seed", True)],
)
def test_data_options_refuse_bools_and_floats(field: str, value: object) -> None:
    from ccsearch.data import DataOptions

    with pytest.raises(UserError, match=rf"{field} must be .*, got {value!r}"):
        DataOptions(**{"resolution": 32, field: value})
    with pytest.raises(UserError, match=rf"{field} must be .*, got {value!r}"):
        load_data("digits", **{"resolution": 32, field: value})
