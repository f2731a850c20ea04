"""The user's own images: an ImageFolder tree read as torchvision numbers it, checked with
one-line errors, and trained from by a study."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest

from condconv_nas.cli import main
from condconv_nas.search.config import load_study_config, load_study_data
from condconv_nas.train.data import DataError, load_dataset

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

CLASSES = ("cat", "dog", "emu")


def _tree(root: Path, n: int = 6, size: int = 12, mode: str = "RGB", splits=("train",),
          seed: int = 0) -> dict[tuple[str, str, str], np.ndarray]:
    """Images whose pixels say their class (class index x 80 + noise); returns what was written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in splits:
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size, size) if mode == "L" else (size, size, 3)
                pixels = np.clip(label * 80 + rng.integers(0, 40, shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{i:03d}.png")
                written[(split, name, f"{i:03d}.png")] = pixels
    return written


def test_images_and_labels_are_read_as_torchvision_numbers_them(tmp_path):
    written = _tree(tmp_path, splits=("train", "val", "test"))
    data = load_dataset(f"imagefolder:{tmp_path}", val_size=None)
    assert data.num_classes == 3 and data.in_channels == 3 and data.size == 12
    # val/ is the validation split, whole and in order; nothing of train/ is carved for it.
    assert len(data.val) == 18 and len(data.train) == 18 and len(data.test) == 18
    for i, (name, file) in enumerate((c, f"{j:03d}.png") for c in CLASSES for j in range(6)):
        expected = written[("val", name, file)].transpose(2, 0, 1)
        assert np.array_equal(data.val.images[i].numpy(), expected)
        assert int(data.val.labels[i]) == CLASSES.index(name)  # sorted class folders
    # Every training image is there once, with its label.
    seen = {(int(y), x.numpy().tobytes()) for x, y in zip(data.train.images, data.train.labels)}
    assert seen == {(CLASSES.index(c), p.transpose(2, 0, 1).tobytes())
                    for (s, c, _), p in written.items() if s == "train"}


def test_grey_images_stay_one_channel_and_a_size_resizes(tmp_path):
    _tree(tmp_path, mode="L", size=10)
    data = load_dataset(f"imagefolder:{tmp_path}", val_size=3)
    assert data.in_channels == 1 and data.size == 10 and len(data.val) == 3
    small = load_dataset(f"imagefolder:{tmp_path}", val_size=3, image_size=8)
    assert small.size == 8
    # Resizing is Pillow's bilinear on each image, nothing else.
    first = Image.open(tmp_path / "train" / "cat" / "000.png").resize((8, 8), Image.BILINEAR)
    assert any(np.array_equal(np.asarray(first), x[0].numpy()) for x in
               (*small.train.images, *small.val.images))


@pytest.mark.parametrize("damage, needle", [
    (lambda r: (r / "train" / "dog" / "001.png").write_bytes(b"not a png"), "001.png: not a readable image"),
    (lambda r: [p.unlink() for p in (r / "train" / "emu").iterdir()], "emu: no images"),
    (lambda r: (r / "val" / "yak").mkdir(parents=True), "class 'yak' is not in train/"),
    (lambda r: Image.new("RGB", (12, 9)).save(r / "train" / "cat" / "odd.png"), "odd.png is 12x9"),
    (lambda r: (r / "train").rename(r / "training"), "no train/ folder"),
])
def test_bad_folders_are_one_line_errors(tmp_path, damage, needle):
    _tree(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(f"imagefolder:{tmp_path}", val_size=3)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_without_pillow_the_error_names_the_extra(tmp_path, monkeypatch):
    _tree(tmp_path)
    real = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(DataError, match=r"condconv-nas\[images\]"):
        load_dataset(f"imagefolder:{tmp_path}", val_size=3)


def test_a_study_trains_from_an_image_folder(tmp_path, write_study, capsys):
    _tree(tmp_path / "pets", n=20, size=12)
    path = write_study(dataset="imagefolder:pets", image_size=16, trials=2, val_size=12,
                       holdout_size=12, recipe={"epochs": 1, "batch_size": 16, "lr": 0.2})
    cfg = load_study_config(path)
    assert cfg.dataset == f"imagefolder:{tmp_path / 'pets'}"  # relative to the study file
    data = load_study_data(cfg)
    assert data.size == 16 and len(data.train) == 60 - 24
    assert main(["search", str(path)]) == 0
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 0
    # Another image_size is another result: resuming under it is refused, nothing changes.
    before = (tmp_path / "t.journal").read_bytes()
    write_study(dataset="imagefolder:pets", image_size=12, trials=2, val_size=12,
                holdout_size=12, recipe={"epochs": 1, "batch_size": 16, "lr": 0.2})
    capsys.readouterr()
    assert main(["search", str(path)]) == 2
    assert "image_size" in capsys.readouterr().err
    assert (tmp_path / "t.journal").read_bytes() == before
