"""Datasets: tiny files in the real on-disk formats, read through torchvision's own classes."""

from __future__ import annotations

import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import lth_sweep.engine.data as data
from lth_sweep.config import DatasetConfig
from lth_sweep.engine.data import augment_batch, draw_augment_params, load_dataset
from lth_sweep.errors import UserError

CPU = torch.device("cpu")
N_TRAIN, N_TEST = 30, 10


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST idx file: big-endian magic 0x0000080<ndim> (uint8), one big-endian int32 per dimension."""
    header = struct.pack(">I", 0x00000800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST") -> None:
    """Image i has pixel (0, 0) = i so the split can be traced; test image 0 also has pixel (0, 1) = 255."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        if prefix == "t10k":
            images[0, 0, 1] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def write_cifar10(root: Path, per_batch: int = 4) -> None:
    """The python-version pickles. The real files are Python 2 pickles whose str keys load as str under
    torchvision's encoding="latin1", so str keys here are what torchvision reads ('data', not b'data')."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        images = np.zeros((per_batch, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane (32x32 each)
        images[:, 1024 + 2 * 32 + 3] = 255  # green, row 2, column 3
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images, "labels": labels, "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)


def traced_index(x: torch.Tensor) -> torch.Tensor:
    """Undo the mnist normalization of pixel (0, 0) to recover each image's index."""
    return ((x[:, 0, 0, 0] * 0.3081 + 0.1307) * 255).round().long()


@pytest.mark.parametrize("name, folder, mean, std", [("mnist", "MNIST", 0.1307, 0.3081),
                                                     ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530)])
def test_mnist_like_shapes_and_normalization(tmp_path: Path, name: str, folder: str, mean: float,
                                             std: float) -> None:
    write_mnist(tmp_path, folder)
    d = load_dataset(DatasetConfig(name=name, root=str(tmp_path), val_size=5), CPU)
    assert d.name == name and d.input_shape == (1, 28, 28) and d.num_classes == 10 and not d.augment
    assert d.train_x.shape == (25, 1, 28, 28) and d.val_x.shape == (5, 1, 28, 28)
    assert d.test_x.shape == (N_TEST, 1, 28, 28)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.val_y.shape == (5,) and d.test_y.tolist() == [i % 10 for i in range(N_TEST)]
    assert d.test_x[0, 0, 0, 1].item() == pytest.approx((1 - mean) / std, abs=1e-6)
    assert d.test_x[0, 0, 5, 5].item() == pytest.approx(-mean / std, abs=1e-6)


def test_val_split_is_fixed_and_disjoint(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    cfg = DatasetConfig(name="mnist", root=str(tmp_path), val_size=7)
    torch.manual_seed(1)
    a = load_dataset(cfg, CPU)
    torch.manual_seed(2)  # the trial seed must not move the split
    b = load_dataset(cfg, CPU)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    train_idx, val_idx = set(traced_index(a.train_x).tolist()), set(traced_index(a.val_x).tolist())
    assert len(val_idx) == 7 and len(train_idx) == N_TRAIN - 7
    assert train_idx.isdisjoint(val_idx) and train_idx | val_idx == set(range(N_TRAIN))
    assert a.train_y.tolist() == [i % 10 for i in traced_index(a.train_x).tolist()]  # labels follow images


def test_val_size_zero_and_too_large(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    d = load_dataset(DatasetConfig(name="mnist", root=str(tmp_path), val_size=0), CPU)
    assert d.val_x.shape == (0, 1, 28, 28) and d.val_y.shape == (0,) and d.train_x.shape[0] == N_TRAIN
    with pytest.raises(UserError) as err:
        load_dataset(DatasetConfig(name="mnist", root=str(tmp_path), val_size=N_TRAIN), CPU)
    assert err.value.key == "dataset.val_size"
    assert f"smaller than the {N_TRAIN} training examples of mnist" in err.value.message


def test_cifar10_layout_and_normalization(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    d = load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path), val_size=4), CPU)
    assert d.input_shape == (3, 32, 32) and d.augment
    assert d.train_x.shape == (16, 3, 32, 32) and d.val_x.shape == (4, 3, 32, 32)
    assert d.test_x.shape == (4, 3, 32, 32) and d.test_y.tolist() == [0, 1, 2, 3]
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert sorted(d.train_y.tolist() + d.val_y.tolist()) == sorted(i % 10 for i in range(20))
    assert d.test_x[0, 1, 2, 3].item() == pytest.approx((1 - 0.4822) / 0.2435, abs=1e-6)
    assert d.test_x[0, 0, 2, 3].item() == pytest.approx(-0.4914 / 0.2470, abs=1e-6)
    assert d.test_x[0, 1, 3, 2].item() == pytest.approx(-0.4822 / 0.2435, abs=1e-6)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_files_name_the_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError) as err:
        load_dataset(DatasetConfig(name=name, root=str(tmp_path)), CPU)
    assert err.value.key == "dataset.root"
    assert "set dataset.download: true" in err.value.message and str(tmp_path) in err.value.message
    assert ("train-images-idx3-ubyte" if name != "cifar10" else "data_batch_1") in err.value.message


def test_missing_cifar_meta_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(UserError) as err:
        load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)), CPU)
    assert "batches.meta" in err.value.message and "data_batch_1" not in err.value.message


def test_mnist1d_generated_cached_and_rng_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    random.seed(123)
    np.random.seed(7)
    py_state, np_state = random.getstate(), np.random.get_state()
    d = load_dataset(DatasetConfig(name="mnist1d", root=str(tmp_path)), CPU)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]

    assert d.input_shape == (40,) and d.num_classes == 10 and not d.augment
    assert d.train_x.shape == (3500, 40) and d.val_x.shape == (500, 40) and d.test_x.shape == (1000, 40)
    assert d.train_x.dtype == torch.float32 and d.test_y.dtype == torch.int64
    assert sorted(p.name for p in (tmp_path / "mnist1d").iterdir()) == ["mnist1d.npz"]  # no temp file left

    def no_regeneration() -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "_generate_mnist1d", no_regeneration)
    again = load_dataset(DatasetConfig(name="mnist1d", root=str(tmp_path), val_size=100), CPU)
    assert again.train_x.shape == (3900, 40) and torch.equal(again.test_x, d.test_x)


# ------------------------------------------------------------------------------------- augmentation


def test_augment_identity() -> None:
    x = torch.randn(5, 3, 32, 32)
    shifts, flips = torch.full((5, 2), 4), torch.zeros(5, dtype=torch.bool)
    assert torch.equal(augment_batch(x, shifts, flips), x)


def test_augment_hand_checked_shift_and_flip() -> None:
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    no_flip, flip = torch.tensor([False]), torch.tensor([True])
    shifted = augment_batch(x, torch.tensor([[0, 0]]), no_flip, pad=1)
    assert shifted[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    shifted = augment_batch(x, torch.tensor([[2, 1]]), no_flip, pad=1)
    assert shifted[0, 0].tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]
    flipped = augment_batch(x, torch.tensor([[1, 1]]), flip, pad=1)
    assert flipped[0, 0].tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]
    both = augment_batch(x, torch.tensor([[0, 0]]), flip, pad=1)
    assert both[0, 0].tolist() == [[0, 0, 0], [2, 1, 0], [5, 4, 0]]


def test_augment_matches_per_sample_reference() -> None:
    x = torch.randn(16, 3, 32, 32)
    shifts, flips = draw_augment_params(16, torch.Generator().manual_seed(0))
    out = augment_batch(x, shifts, flips)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        r, c = shifts[i].tolist()
        ref = padded[i, :, r:r + 32, c:c + 32]
        assert torch.equal(out[i], ref.flip(-1) if flips[i] else ref)


def test_augment_params_deterministic_and_in_range() -> None:
    s1, f1 = draw_augment_params(1000, torch.Generator().manual_seed(3))
    s2, f2 = draw_augment_params(1000, torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and torch.equal(f1, f2)
    assert s1.dtype == torch.int64 and s1.shape == (1000, 2)
    assert f1.dtype == torch.bool and f1.shape == (1000,)
    assert s1.min().item() == 0 and s1.max().item() == 8 and 400 < f1.sum().item() < 600
    x = torch.randn(1000, 3, 8, 8)
    assert torch.equal(augment_batch(x, s1, f1), augment_batch(x, s2, f2))
