"""Datasets as device-resident tensors: loaded once, normalized, split, moved to the device.

No DataLoader: the engine indexes these tensors directly. CIFAR-10 augmentation (pad-4 random crop and
horizontal flip) is applied per batch on the device by `augment_batch`, with parameters drawn on the CPU
from the trial's generator by `draw_augment_params`, so a run is reproducible on any device.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lth_sweep.checkpoint import atomic_write
from lth_sweep.config import DEFAULT_VAL_SIZE, DatasetConfig
from lth_sweep.errors import UserError

DOWNLOAD_TIMEOUT_S = 60  # per connection attempt and per read: a host that never answers fails, not hangs
VAL_SPLIT_SEED = 20190327  # fixed, independent of the trial seed: every trial sees the same val set

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

NORMALIZATION = {  # (mean, std) per channel of pixels scaled to [0, 1]
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass
class DatasetSplits:
    name: str
    train_x: torch.Tensor  # float32 [N, *input_shape], normalized, on the device
    train_y: torch.Tensor  # int64 [N], on the device
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    augment: bool  # pad-4 random crop + horizontal flip while training (cifar10 only)
    pad_fill: torch.Tensor | None = None  # per-channel value of the crop padding: black (0 before normalization)


def _cifar10_class() -> type:
    """torchvision's CIFAR10 with its md5 checks replaced by existence checks.

    torchvision compares each pickle (and batches.meta, in `_load_meta`) with the md5 sum of the official
    files, which small test files cannot match. Only the checks change; the reading code is torchvision's.
    torchvision is imported here, not at module level: the engine runs without it on synthetic data.
    """
    import torchvision

    class CIFAR10(torchvision.datasets.CIFAR10):
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}  # check_integrity(path, None): exists only

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    return CIFAR10


def load_dataset(cfg: DatasetConfig, device: torch.device) -> DatasetSplits:
    """Load `cfg.name`, hold out the validation set, and move every tensor to `device` once."""
    root = Path(cfg.root).expanduser()
    if cfg.name == "mnist1d":
        train_x, train_y, test_x, test_y = _load_mnist1d(root)
    elif cfg.name in ("mnist", "fashion_mnist"):
        train_x, train_y, test_x, test_y = _load_mnist_like(cfg.name, root, cfg.download)
    elif cfg.name == "cifar10":
        train_x, train_y, test_x, test_y = _load_cifar10(root, cfg.download)
    else:  # the config schema only lets the four names through
        raise UserError("dataset.name", f"unknown dataset {cfg.name!r}")

    val_size = DEFAULT_VAL_SIZE[cfg.name] if cfg.val_size is None else cfg.val_size
    n_train = len(train_y)
    if val_size >= n_train:
        raise UserError("dataset.val_size",
                        f"must be smaller than the {n_train} training examples of {cfg.name}")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().to(device)

    return DatasetSplits(
        name=cfg.name,
        train_x=put(train_x[train_idx]), train_y=put(train_y[train_idx]),
        val_x=put(train_x[val_idx]), val_y=put(train_y[val_idx]),
        test_x=put(test_x), test_y=put(test_y),
        input_shape=tuple(train_x.shape[1:]),
        num_classes=10,
        augment=cfg.name == "cifar10" if cfg.augment is None else cfg.augment,
        pad_fill=put(black(cfg.name)) if cfg.name in NORMALIZATION else None,
    )


def black(name: str) -> torch.Tensor:
    """The normalized value of a black pixel (0 before normalization), per channel: -mean/std, [C]."""
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in NORMALIZATION[name])
    return -mean / std


def _missing(folder: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def _ensure_files(folder: Path, names: tuple[str, ...], download: bool, fetch: Callable[[], object]) -> None:
    """The dataset's files are in `folder`: downloaded when missing and asked for, else a one-line UserError
    before torchvision gets a chance to print its own."""
    missing = _missing(folder, names)
    if missing and download:
        _download(fetch, folder, names)
    elif missing:
        raise UserError("dataset.root", f"missing {', '.join(missing)} in {folder}; put the files there "
                                        "or set dataset.download: true")


def _download(fetch: Callable[[], object], folder: Path, names: tuple[str, ...]) -> None:
    """Runs torchvision's download; a failure (no network, a read-only root) is one line that says which files
    to put in which folder."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        fetch()
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision wraps its mirrors' errors
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(err).__name__
        raise UserError("dataset.download", f"could not download the dataset ({reason}); put "
                                            f"{', '.join(names)} in {folder} and run again "
                                            "(download: true then finds them there)") from None
    finally:
        socket.setdefaulttimeout(previous)


def _normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32, scaled to [0, 1], then standardized per channel."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in NORMALIZATION[name])
    return (images.float() / 255 - mean) / std


def _load_mnist_like(name: str, root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    folder = root / cls.__name__ / "raw"
    _ensure_files(folder, MNIST_FILES, download, lambda: cls(root=root, train=True, download=True))
    out = []
    for train in (True, False):
        ds = cls(root=root, train=train, download=False)
        out += [_normalize(ds.data.unsqueeze(1), name), ds.targets.long()]
    return tuple(out)


def _load_cifar10(root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    cifar10 = _cifar10_class()
    folder = root / cifar10.base_folder
    _ensure_files(folder, CIFAR10_FILES, download, lambda: cifar10(root=root, train=True, download=True))
    out = []
    for train in (True, False):
        ds = cifar10(root=root, train=train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # torchvision keeps HWC
        out += [_normalize(images, "cifar10"), torch.tensor(ds.targets, dtype=torch.int64)]
    return tuple(out)


def _load_mnist1d(root: Path) -> tuple[torch.Tensor, ...]:
    """Generate MNIST-1D offline (4000 train / 1000 test, length 40), cached in <root>/mnist1d/mnist1d.npz."""
    path = root / "mnist1d" / "mnist1d.npz"
    if not path.is_file():
        arrays = _generate_mnist1d()
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
    with np.load(path) as d:
        return (torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).long(),
                torch.from_numpy(d["x_test"]).float(), torch.from_numpy(d["y_test"]).long())


def _generate_mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global `random` and `numpy` generators: leave them as we found them.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}


# ------------------------------------------------------------------------------------- augmentation


def draw_augment_params(n: int, generator: torch.Generator,
                        pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU tensors: crop offsets int64 [n, 2] uniform in [0, 2*pad] and flips bool [n] with p = 0.5."""
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, dtype=torch.int64)
    flips = torch.rand(n, generator=generator) < 0.5
    return shifts, flips


def augment_batch(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int = 4,
                  fill: torch.Tensor | None = None) -> torch.Tensor:
    """Pad [n, C, H, W] by `pad` with `fill` (per channel [C]; None = 0), crop HxW at (shifts[i, 0],
    shifts[i, 1]), flip where flips[i]. Datasets pass their black pixel (`black`), as torchvision's
    RandomCrop(padding=4) pads the unnormalized image with 0.

    One pad and one gather for the whole batch; the flip is folded into the gather's column indices.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    if fill is not None:  # the border takes the per-channel fill, the image keeps its exact values
        border = F.pad(torch.zeros(1, 1, h, w, dtype=torch.bool, device=x.device), (pad, pad, pad, pad), value=True)
        padded = torch.where(border, fill.to(x.dtype).view(1, c, 1, 1), padded)
    rows = shifts[:, 0:1] + torch.arange(h, device=x.device)  # [n, H]
    cols = shifts[:, 1:2] + torch.arange(w, device=x.device)  # [n, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
