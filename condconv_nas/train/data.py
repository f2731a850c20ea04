"""Datasets as tensors on the training device, with batched on-device augmentation.

Images stay uint8 [N, C, H, W] on the device; each batch is cropped, flipped and normalised there,
so no DataLoader worker processes are needed (the airbench approach).
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

__all__ = ["DATASETS", "DataError", "Dataset", "Split", "augment", "load_dataset", "normalize", "resize"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "CONDCONV_NAS_DATA"
DATASETS = ("fashion-mnist", "cifar10", "cifar100", "npz:DIR", "imagefolder:DIR", "synthetic")

_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Per-channel mean and std of the training images (the usual published values).
_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class DataError(UserError):
    """A dataset that cannot be found or read; the message says where it should be."""


@dataclass(frozen=True)
class Split:
    """Images uint8 [N, C, H, W] and labels int64 [N], on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: str | torch.device) -> Split:
        """The split on `device`."""
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Dataset:
    """Train/val/test splits plus what augmentation and normalisation need.

    `holdout` is the split claims are scored on: carved from the training images disjoint from
    validation and training, or the test split; empty when the study has none (written before
    holdout splits existed).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    pad: int
    holdout: Split | None = None

    @property
    def in_channels(self) -> int:
        """Image channels."""
        return self.train.images.shape[1]

    @property
    def size(self) -> int:
        """Image side in pixels."""
        return self.train.images.shape[-1]

    def to(self, device: str | torch.device) -> Dataset:
        """The dataset with every split on `device`."""
        return replace(self, train=self.train.to(device), val=self.val.to(device),
                       test=self.test.to(device),
                       holdout=None if self.holdout is None else self.holdout.to(device))


# --- readers ------------------------------------------------------------------------------------


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (gzip or plain): big-endian magic, dims, then uint8 data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is corrupt ({err}); reinstall it "
                        "(apt-get install --reinstall dataset-fashion-mnist)") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file of the expected kind (magic {magic}); put the "
                        "original Fashion-MNIST file there (apt-get install --reinstall "
                        "dataset-fashion-mnist)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise DataError(f"{path} is corrupt: header says {count} values, file has "
                        f"{len(raw) - header}; reinstall it (apt-get install --reinstall "
                        "dataset-fashion-mnist)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_dir(name: str, data_dir: str | None, subdir: str | None, marker: str) -> Path | None:
    """The folder holding `marker`: in --data-dir only when one is named, else in
    $CONDCONV_NAS_DATA, then Debian's (a folder the user names is never silently passed over)."""
    if data_dir:
        roots = [Path(data_dir)]
    else:
        roots = [Path(p) for p in (os.environ.get(ENV_VAR),) if p]
        if name == "fashion-mnist":
            roots.append(DEBIAN_FASHION_MNIST)
    for root in roots:
        for candidate in ([root / subdir, root] if subdir else [root]) + [root / name]:
            if (candidate / marker).is_file():
                return candidate
    return None


def _fashion_mnist(data_dir: str | None) -> tuple[np.ndarray, ...]:
    folder = _find_dir("fashion-mnist", data_dir, None, _FMNIST_FILES["train_images"])
    if folder is None and data_dir:
        raise DataError(f"Fashion-MNIST not found in {data_dir}: it needs "
                        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz there (or a "
                        "fashion-mnist/ folder holding them); fix the folder or drop --data-dir")
    if folder is None:
        raise DataError(
            "Fashion-MNIST not found: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in --data-dir or "
            f"${ENV_VAR}, or run `apt-get install dataset-fashion-mnist` ({DEBIAN_FASHION_MNIST})")
    arrays = []
    for key, file in _FMNIST_FILES.items():
        path = folder / file
        if not path.is_file():
            raise DataError(f"{path} is missing; Fashion-MNIST needs all four IDX files there")
        arrays.append(_read_idx(path, 2051 if "images" in key else 2049))
    xtr, ytr, xte, yte = arrays
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"{folder}: image and label counts differ; the files are mismatched")
    return xtr[:, None], ytr, xte[:, None], yte


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a CIFAR file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the CIFAR folder is incomplete") from None
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as err:
        raise DataError(f"{path} is corrupt or not a CIFAR python batch ({err!s:.80})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path} is corrupt: expected N x 3072 images with N labels, "
                        f"got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(name: str, data_dir: str | None) -> tuple[np.ndarray, ...]:
    if name == "cifar10":
        sub, train_files, test_files, key = ("cifar-10-batches-py",
                                             [f"data_batch_{i}" for i in range(1, 6)],
                                             ["test_batch"], b"labels")
    else:
        sub, train_files, test_files, key = "cifar-100-python", ["train"], ["test"], b"fine_labels"
    folder = _find_dir(name, data_dir, sub, train_files[0])
    if folder is None and data_dir:
        raise DataError(f"{name} not found in {data_dir}: it needs the python version's folder "
                        f"{sub}/ there; fix the folder or drop --data-dir")
    if folder is None:
        raise DataError(f"{name} not found: put the python version's folder {sub}/ (from "
                        f"https://www.cs.toronto.edu/~kriz/cifar.html) in --data-dir or ${ENV_VAR}")
    parts = {split: [_read_cifar_batch(folder / f, key) for f in files]
             for split, files in (("train", train_files), ("test", test_files))}
    xtr, ytr = (np.concatenate(a) for a in zip(*parts["train"]))
    xte, yte = (np.concatenate(a) for a in zip(*parts["test"]))
    return xtr, ytr, xte, yte


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            ik = "images" if "images" in keys else "x" if "x" in keys else None
            lk = "labels" if "labels" in keys else "y" if "y" in keys else None
            if ik is None or lk is None:
                raise DataError(f"{path} needs arrays 'images' and 'labels' (or 'x' and 'y'), "
                                f"has {sorted(keys)}")
            images, labels = z[ik], z[lk]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path} is corrupt or not an .npz file ({err!s:.80})") from None
    if images.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8 NHWC, got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] > 64:
        raise DataError(f"{path}: images must be square NHWC (N, H, W, C), got {images.shape}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be N integers, got {labels.shape} {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: labels must be >= 0")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64)


def _path_hint(name: str) -> str:
    """For a dataset named by a bare path, the prefix it needs ("" when it names no path)."""
    path = Path(name).expanduser()
    if (path.is_file() and path.suffix == ".npz") or (path / "train.npz").is_file():
        return f" (for this file or folder: npz:{name})"
    if path.is_dir():
        return f" (for this folder of images: imagefolder:{name})"
    return ""


def _npz(folder: Path) -> tuple[np.ndarray, ...]:
    if folder.is_file():  # one file: its images are the training set, with no test split
        xtr, ytr = _npz_arrays(folder)
        return xtr, ytr, xtr[:0], ytr[:0]
    if not folder.is_dir():
        raise DataError(f"npz path {folder} does not exist; give a folder with train.npz (and "
                        "test.npz), or one .npz file, with uint8 NHWC 'images' and integer 'labels'")
    if not (folder / "train.npz").is_file():
        raise DataError(f"{folder}/train.npz is missing; an npz dataset needs train.npz "
                        "(and optionally test.npz) with 'images' (uint8 NHWC) and 'labels'")
    xtr, ytr = _npz_arrays(folder / "train.npz")
    if (folder / "test.npz").is_file():
        xte, yte = _npz_arrays(folder / "test.npz")
        if xte.shape[1:] != xtr.shape[1:]:
            raise DataError(f"{folder}: test images {xte.shape[1:]} differ from train "
                            f"{xtr.shape[1:]}")
    else:
        xte, yte = xtr[:0], ytr[:0]
    return xtr, ytr, xte, yte


def _synthetic(seed: int, n_train: int = 2000, n_test: int = 500, size: int = 16,
               channels: int = 1, classes: int = 4) -> tuple[np.ndarray, ...]:
    """Learnable noise: each class is a fixed random template plus per-image noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (classes, channels, size, size))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        x = 0.6 * templates[y] + 0.4 * rng.uniform(0, 255, (n, channels, size, size))
        return x.astype(np.uint8), y.astype(np.int64)

    return (*draw(n_train), *draw(n_test))


# --- assembly -----------------------------------------------------------------------------------


def load_dataset(name: str, data_dir: str | None = None, val_size: int | None = None, split_seed: int = 0,
                 train_limit: int | None = None, device: str | torch.device = "cpu",
                 holdout: int | str | None = None, image_size: int | None = None) -> Dataset:
    """Load a dataset, carve seeded validation (and holdout) splits from train, put it on `device`.

    Args:
        name: fashion-mnist, cifar10, cifar100, npz:DIR, imagefolder:DIR (or imagefolder with
            data_dir naming DIR) or synthetic.
        data_dir: where to look first (then $CONDCONV_NAS_DATA, then Debian's folder).
        val_size: images taken from the training set for validation, fixed by split_seed
            (default: 5000, or a tenth of the training set when that is smaller).
        split_seed: seed of the train/val/holdout split and of the optional subset.
        train_limit: keep only this many training images (after the splits), for fast runs.
        device: where the tensors live.
        holdout: the split claims are scored on: a number of training images carved disjoint
            from validation and training ("val": as many as validation), "test" for the
            dataset's test split, or None for none (the layout of studies stored before).
        image_size: imagefolder only: resize every image to this square size.
    """
    flip, pad, given_val = True, 4, None
    if name == "fashion-mnist":
        xtr, ytr, xte, yte = _fashion_mnist(data_dir)
        pad = 2
    elif name in ("cifar10", "cifar100"):
        xtr, ytr, xte, yte = _cifar(name, data_dir)
    elif name.startswith("npz:"):
        xtr, ytr, xte, yte = _npz(Path(name[4:]).expanduser())
        pad = max(1, xtr.shape[-1] // 8)
    elif name == "imagefolder" or name.startswith("imagefolder:"):
        from .imagefolder import read_imagefolder

        where = name[len("imagefolder:"):] if ":" in name else data_dir
        if not where:
            raise DataError("imagefolder needs its folder: dataset imagefolder:DIR, or --data-dir")
        folder = Path(where).expanduser()
        if not folder.is_dir():
            raise DataError(f"imagefolder {folder} does not exist; it needs train/<class>/ "
                            "folders of images (optional val/ and test/ alike)")
        xtr, ytr, xte, yte, given_val = read_imagefolder(folder, image_size, DataError)
        pad = max(1, xtr.shape[-1] // 8)
    elif name == "synthetic":
        xtr, ytr, xte, yte = _synthetic(split_seed)
        flip, pad = False, 1
    else:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}"
                        + _path_hint(name))
    if given_val is not None:  # the folder's own val/: nothing carved for validation
        n_val, val_size = len(given_val[1]), 0
    else:
        if val_size is None:
            val_size = min(5000, max(1, len(ytr) // 10))
        n_val = val_size
    carve = n_val if holdout == "val" else holdout if isinstance(holdout, int) else 0
    if given_val is None and not 0 < val_size < len(ytr):
        raise DataError(f"validation size {val_size} must be between 1 and the {len(ytr)} "
                        f"training images minus one")
    if val_size + carve >= len(ytr):
        raise DataError(f"validation ({val_size}) and holdout ({carve}) images leave none of the "
                        f"{len(ytr)} training images to train on; lower val_size or "
                        "holdout_size, or use holdout: test")
    if holdout == "test" and not len(yte):
        raise DataError(f"holdout: test, but {name} has no test split (an npz folder needs "
                        "test.npz; one .npz file has none); write holdout_size instead to carve one "
                        "from training")
    # One permutation: validation first, then the holdout, then training. Without a holdout the
    # layout is the one studies stored before holdout splits had.
    order = np.random.default_rng(split_seed).permutation(len(ytr))
    val_idx, hold_idx = order[:val_size], order[val_size : val_size + carve]
    train_idx = order[val_size + carve :]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    num_classes = int(max(ytr.max(), yte.max() if len(yte) else 0)) + 1
    if name in _STATS:
        mean, std = _STATS[name]
    else:  # computed from the training images, per channel
        pixels = xtr[train_idx].astype(np.float64) / 255
        mean = tuple(float(v) for v in pixels.mean(axis=(0, 2, 3)))
        std = tuple(max(float(v), 1e-3) for v in pixels.std(axis=(0, 2, 3)))

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.array(x, copy=True)), torch.from_numpy(np.array(y)))

    test = split(xte, yte)
    held = (test if holdout == "test" else split(xtr[hold_idx], ytr[hold_idx]) if carve
            else None)
    val = split(*given_val) if given_val is not None else split(xtr[val_idx], ytr[val_idx])
    data = Dataset(name=name, train=split(xtr[train_idx], ytr[train_idx]), val=val, test=test,
                   num_classes=num_classes, mean=tuple(mean), std=tuple(std), flip=flip, pad=pad,
                   holdout=held)
    return data.to(device)


def normalize(images: torch.Tensor, data: Dataset, dtype: torch.dtype = torch.float32
              ) -> torch.Tensor:
    """uint8 images -> float, standardised per channel."""
    mean = torch.tensor(data.mean, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    return (images.to(dtype) / 255 - mean) / std


def augment(images: torch.Tensor, data: Dataset, generator: torch.Generator) -> torch.Tensor:
    """Random crop with reflect padding and (where it fits) horizontal flip, for a whole batch."""
    b, _, h, w = images.shape
    device = images.device
    if data.pad:
        p = data.pad
        padded = F.pad(images.float(), (p, p, p, p), mode="reflect").to(images.dtype)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(b, device=device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if data.flip:
        flip = torch.rand(b, generator=generator, device=device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def resize(data: Dataset, size: int) -> Dataset:
    """Every split resampled to `size` x `size` (bilinear, antialiased), for resolution search."""

    def one(split: Split) -> Split:
        if not len(split):
            return Split(split.images[:, :, :size, :size].new_zeros(
                (0, split.images.shape[1], size, size)), split.labels)
        x = F.interpolate(split.images.float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        return Split(x.round().clamp(0, 255).to(torch.uint8), split.labels)

    return replace(data, train=one(data.train), val=one(data.val), test=one(data.test),
                   holdout=None if data.holdout is None else one(data.holdout),
                   pad=max(1, data.pad * size // data.size))
