"""The user's own images: torchvision's ImageFolder layout, decoded once with Pillow.

`DIR/train/<class>/*.png|jpg|...` (classes are the sorted folder names, as torchvision and timm
number them), optionally `DIR/val/<class>/` (then the validation split, instead of one carved
from train) and `DIR/test/<class>/`. Every image is decoded once, converted to one channel count
for the whole dataset (1 when every image is greyscale, else 3, RGB), resized to `image_size`
square (bilinear, aspect not kept) when given, and returned as uint8 NCHW arrays like every
other dataset, which `data.load_dataset` then keeps on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["EXTENSIONS", "read_imagefolder"]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GREY = ("1", "L", "LA", "I", "I;16", "F")

Arrays = tuple[np.ndarray, np.ndarray]


def read_imagefolder(folder: Path, image_size: int | None, error: type[Exception]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Arrays | None]:
    """(train images, labels, test images, labels, the val/ split or None); `error` is raised
    with one line naming the file or folder and the fix."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise error("imagefolder datasets are decoded with Pillow, which is not installed; "
                    "pip install 'condconv-nas[images]'") from None
    if not (folder / "train").is_dir():
        raise error(f"imagefolder {folder}: no train/ folder; the layout is "
                    f"{folder}/train/<class>/*.png (optional val/ and test/ alike)")
    classes = sorted(d.name for d in (folder / "train").iterdir()
                     if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise error(f"{folder / 'train'}: no class folders; put each class's images in "
                    f"{folder / 'train'}/<class>/")
    files = {split: _files(folder / split, classes, error, required=split == "train")
             for split in ("train", "val", "test") if split == "train" or (folder / split).is_dir()}
    modes = {}
    for paths in files.values():
        for path, _ in paths:
            try:
                with Image.open(path) as img:
                    modes[path] = (img.mode, img.size)
            except (OSError, UnidentifiedImageError, ValueError) as err:
                raise error(f"{path}: not a readable image ({err!s:.80}); remove or replace "
                            "it") from None
    channels = 1 if all(m in _GREY for m, _ in modes.values()) else 3
    if image_size is None:
        first = next(iter(modes.values()))[1]
        odd = next(((p, v[1]) for p, v in modes.items() if v[1] != first or v[1][0] != v[1][1]),
                   None)
        if odd is not None:
            path, (w, h) = odd
            raise error(f"imagefolder {folder}: images are not all one square size ({path} is "
                        f"{w}x{h}); set image_size in the study file (or --image-size) to "
                        "resize them")
    out = {split: _decode(paths, channels, image_size, Image, error)
           for split, paths in files.items()}
    xtr, ytr = out["train"]
    xte, yte = out.get("test", (xtr[:0], ytr[:0]))
    return xtr, ytr, xte, yte, out.get("val")


def _files(root: Path, classes: list[str], error: type[Exception], required: bool
           ) -> list[tuple[Path, int]]:
    here = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [c for c in here if c not in classes]
    if unknown:
        raise error(f"{root / unknown[0]}: class {unknown[0]!r} is not in train/; every class of "
                    f"{root.name}/ needs a folder of training images too")
    out = []
    for label, name in enumerate(classes):
        if not (root / name).is_dir():
            continue
        images = sorted(p for p in (root / name).iterdir()
                        if p.is_file() and p.suffix.lower() in EXTENSIONS
                        and not p.name.startswith("."))
        if not images and (required or name in here):
            raise error(f"{root / name}: no images ({', '.join(EXTENSIONS)}); add some or remove "
                        "the folder")
        out += [(p, label) for p in images]
    return out


def _decode(paths: list[tuple[Path, int]], channels: int, size: int | None, Image,
            error: type[Exception]) -> Arrays:
    images = []
    for path, _ in paths:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if size is not None and img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(img, dtype=np.uint8))
        except (OSError, ValueError) as err:
            raise error(f"{path}: not a readable image ({err!s:.80}); remove or replace "
                        "it") from None
    x = np.stack(images)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.array([label for _, label in paths], dtype=np.int64)
