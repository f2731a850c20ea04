"""Dataset readers on files written in each format, splits, and batched on-device augmentation."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from condconv_nas.train import data as D
from condconv_nas.train.data import DataError, augment, load_dataset, normalize


def write_idx(path, array: np.ndarray, magic: int, gz: bool = True) -> None:
    """IDX as Fashion-MNIST ships it: magic, big-endian dims, raw uint8."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)


def fake_fmnist(folder, n_train=300, n_test=50, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), 2049)
    return folder


def test_fashion_mnist_idx_reader(tmp_path):
    folder = fake_fmnist(tmp_path / "fm")
    data = load_dataset("fashion-mnist", str(folder), val_size=50)
    raw = gzip.open(folder / "train-images-idx3-ubyte.gz").read()[16:]
    images = np.frombuffer(raw, np.uint8).reshape(-1, 1, 28, 28)
    order = np.random.default_rng(0).permutation(300)
    assert torch.equal(data.val.images, torch.from_numpy(images[order[:50]]))
    assert torch.equal(data.train.images, torch.from_numpy(images[order[50:]]))
    assert len(data.test) == 50 and data.in_channels == 1 and data.size == 28
    assert data.num_classes == 10 and data.flip


def test_data_dir_then_environment(tmp_path, monkeypatch):
    env = fake_fmnist(tmp_path / "env", n_train=120)
    monkeypatch.setenv(D.ENV_VAR, str(env))
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    assert len(load_dataset("fashion-mnist", val_size=20).train) == 100
    first = fake_fmnist(tmp_path / "first", n_train=220)
    assert len(load_dataset("fashion-mnist", str(first), val_size=20).train) == 200


def test_missing_and_corrupt_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    with pytest.raises(DataError, match="not found in .*empty"):  # a named folder only
        load_dataset("fashion-mnist", str(tmp_path / "empty"))
    folder = fake_fmnist(tmp_path / "fm")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is missing"):
        load_dataset("fashion-mnist", str(folder))
    folder = fake_fmnist(tmp_path / "fm2")
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])  # truncated gzip
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("fashion-mnist", str(folder))
    folder = fake_fmnist(tmp_path / "fm3")
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((10, 28, 28)), 2049)  # wrong magic
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("fashion-mnist", str(folder))


def write_cifar(folder, name: str, n_per_file=40, seed=0):
    """Python-pickle batches as the CIFAR 'python version' ships them (dicts with bytes keys)."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        sub, files, key, classes = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + [
            "test_batch"], b"labels", 10
    else:
        sub, files, key, classes = "cifar-100-python", ["train", "test"], b"fine_labels", 100
    root = folder / sub
    root.mkdir(parents=True)
    written = {}
    for f in files:
        batch = {b"data": rng.integers(0, 256, (n_per_file, 3072)).astype(np.uint8),
                 key: rng.integers(0, classes, n_per_file).tolist(), b"batch_label": b"x",
                 b"filenames": [b"a.png"] * n_per_file}
        if name == "cifar100":
            batch[b"coarse_labels"] = [0] * n_per_file
        with open(root / f, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
        written[f] = batch
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_pickle_reader(tmp_path, name):
    written = write_cifar(tmp_path, name)
    data = load_dataset(name, str(tmp_path), val_size=10)
    test_file = "test_batch" if name == "cifar10" else "test"
    want = torch.from_numpy(written[test_file][b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(data.test.images, want)
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    assert data.test.labels.tolist() == written[test_file][label_key]
    assert len(data.train) + len(data.val) == (200 if name == "cifar10" else 40)
    assert data.in_channels == 3 and data.size == 32


def test_cifar_reader_refuses_code_and_reports_corruption(tmp_path):
    write_cifar(tmp_path, "cifar10")
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    batch.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="data_batch_2 is corrupt or not a CIFAR"):
        load_dataset("cifar10", str(tmp_path))
    batch.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", str(tmp_path))


def test_npz_folder(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 12, 12)).astype(np.uint8)  # grayscale NHW is accepted
    y = rng.integers(0, 3, 60)
    np.savez(tmp_path / "train.npz", images=x, labels=y)
    np.savez(tmp_path / "test.npz", x=x[:7], y=y[:7])
    data = load_dataset(f"npz:{tmp_path}")
    assert data.in_channels == 1 and data.size == 12 and len(data.test) == 7
    assert len(data.val) == 6 and data.num_classes == 3
    assert abs(data.mean[0] - x[np.random.default_rng(0).permutation(60)[6:]].mean() / 255) < 1e-6


def test_npz_file_is_its_training_set(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (50, 8, 8, 3)).astype(np.uint8)
    y = rng.integers(0, 4, 50)
    np.savez(tmp_path / "mine.npz", images=x, labels=y)
    (tmp_path / "folder").mkdir()
    np.savez(tmp_path / "folder" / "train.npz", images=x, labels=y)
    one, folder = load_dataset(f"npz:{tmp_path / 'mine.npz'}"), load_dataset(f"npz:{tmp_path / 'folder'}")
    for a, b in zip((one.train, one.val), (folder.train, folder.val)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert len(one.test) == 0 and one.in_channels == 3


def test_a_bare_path_is_told_its_prefix(tmp_path):
    np.savez(tmp_path / "mine.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, int))
    (tmp_path / "pics").mkdir()
    with pytest.raises(DataError, match=r"npz:.*mine\.npz"):
        load_dataset(str(tmp_path / "mine.npz"))
    with pytest.raises(DataError, match=r"imagefolder:.*pics"):
        load_dataset(str(tmp_path / "pics"))


@pytest.mark.parametrize("arrays, needle", [
    ({"pics": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(4, int)}, "needs arrays"),
    ({"images": np.zeros((4, 8, 8, 3), np.float32), "labels": np.zeros(4, int)}, "uint8"),
    ({"images": np.zeros((4, 8, 6, 3), np.uint8), "labels": np.zeros(4, int)}, "square"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(3, int)}, "labels must be"),
])
def test_npz_errors(tmp_path, arrays, needle):
    np.savez(tmp_path / "train.npz", **arrays)
    with pytest.raises(DataError, match=needle):
        load_dataset(f"npz:{tmp_path}")


def test_unknown_dataset_and_bad_val_size():
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="validation size"):
        load_dataset("synthetic", val_size=10**6)


def test_split_is_seeded_disjoint_and_limitable():
    a, b = load_dataset("synthetic", val_size=100), load_dataset("synthetic", val_size=100)
    assert torch.equal(a.val.images, b.val.images)
    c = load_dataset("synthetic", val_size=100, train_limit=250)
    assert len(c.train) == 250 and torch.equal(c.train.images, a.train.images[:250])
    pool = {bytes(x.numpy().tobytes()) for x in a.train.images}
    assert not any(bytes(x.numpy().tobytes()) in pool for x in a.val.images)


def test_crop_and_flip_match_a_per_example_loop():
    data = load_dataset("synthetic", val_size=10)
    data = D.Dataset(**{**data.__dict__, "flip": True, "pad": 3})
    images = data.train.images[:16]
    got = augment(images, data, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # same draws, same order as augment
    dy = torch.randint(0, 7, (16,), generator=gen)
    dx = torch.randint(0, 7, (16,), generator=gen)
    flip = torch.rand(16, generator=gen) < 0.5
    for i in range(16):
        padded = F.pad(images[i : i + 1].float(), (3, 3, 3, 3), mode="reflect")[0]
        want = padded[:, dy[i] : dy[i] + 16, dx[i] : dx[i] + 16].to(torch.uint8)
        if flip[i]:
            want = want.flip(2)
        assert torch.equal(got[i], want)


def test_normalize_standardises_per_channel():
    data = load_dataset("synthetic", val_size=10)
    x = normalize(data.train.images, data)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_a_named_data_dir_is_the_only_place_read(tmp_path, monkeypatch):
    # A folder the user names without the files is an error naming it, even when the
    # environment's folder (or Debian's) holds a copy that would otherwise be used.
    env = fake_fmnist(tmp_path / "env", n_train=120)
    monkeypatch.setenv(D.ENV_VAR, str(env))
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match=f"not found in {tmp_path / 'mine'}"):
        load_dataset("fashion-mnist", str(tmp_path / "mine"))
    with pytest.raises(DataError, match="not found in"):
        load_dataset("cifar10", str(tmp_path / "mine"))


def test_holdout_is_carved_disjoint_from_validation_and_training():
    from condconv_nas.train.data import load_dataset

    plain = load_dataset("synthetic", val_size=300)
    data = load_dataset("synthetic", val_size=300, holdout="val")
    assert len(data.holdout) == len(data.val) == 300 and len(data.train) == 2000 - 600
    # The validation split is the same images as without a holdout; training lost the holdout's.
    assert torch.equal(data.val.images, plain.val.images)
    rows = {tuple(x.flatten().tolist()) for x in data.train.images}
    assert not any(tuple(x.flatten().tolist()) in rows for x in data.holdout.images)
    assert not any(tuple(x.flatten().tolist()) in rows for x in data.val.images)
    assert torch.equal(data.holdout.images, plain.train.images[:300])  # the next 300 of the order
    sized = load_dataset("synthetic", val_size=300, holdout=120)
    assert len(sized.holdout) == 120 and len(sized.train) == 2000 - 420
    test = load_dataset("synthetic", val_size=300, holdout="test")
    assert torch.equal(test.holdout.images, test.test.images) and len(test.train) == 1700
    assert plain.holdout is None


@pytest.mark.parametrize("kw, needle", [
    ({"val_size": 1000, "holdout": 1000}, "leave none of the 2000 training images"),
])
def test_holdout_bad_sizes_are_one_line_errors(kw, needle):
    from condconv_nas.train.data import DataError, load_dataset

    with pytest.raises(DataError, match=needle):
        load_dataset("synthetic", **kw)
