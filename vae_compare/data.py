"""MNIST, Fashion-MNIST and the synthetic set as tensors on the training device, batched by a shuffled index.

The four standard idx files (.gz or plain) are looked for, in order: `data.root`; the folder in
$VAE_COMPARE_DATA; Debian's /usr/share/datasets/fashion-mnist (Fashion-MNIST only); otherwise
torchvision downloads them into a cache folder (under a file lock, so parallel jobs download once).
dataset=synthetic reads no file: vae_compare/synthetic.py generates its images (the true Bernoulli means as
grey levels, binarized as MNIST's are) and labels, with splits of MNIST's sizes.
"""

import contextlib
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from vae_compare import UserError, synthetic

# config name -> torchvision's dataset class, for the data sets read from idx files
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# every data.name (the schema's choice)
DATASETS = (*TORCHVISION_CLASSES, synthetic.NAME)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EXPECTED_COUNT = {"train": 60000, "test": 10000}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
DEBIAN_FOLDERS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vae-compare"
DATA_ENV = "VAE_COMPARE_DATA"


def find_file(folder: Path, stem: str):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def has_all_files(folder: Path) -> bool:
    return all(find_file(folder, stem) for stem in FILES.values())


def read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    """Read one idx file, checking its magic number, item count, shape and length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise UserError(f"cannot read data file {path}: {error}") from None
    found_magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found_magic != magic:
        raise UserError(f"{path} is not an idx file of the expected kind (magic {found_magic}, expected {magic})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected_shape = (count, 28, 28) if magic == IMAGE_MAGIC else (count,)
    if shape != expected_shape:
        raise UserError(f"{path} has shape {shape}, expected {expected_shape}")
    if len(raw) != header + int(np.prod(shape)):
        raise UserError(f"{path} is truncated or has trailing bytes ({len(raw)} bytes, expected {header + int(np.prod(shape))})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def download_folder(name: str) -> Path:
    """Where `download` leaves the dataset's idx files (torchvision's layout under the cache)."""
    return CACHE / TORCHVISION_CLASSES[name] / "raw"


def download(name: str) -> Path:
    """Fetch the files with torchvision into the cache, once even when several jobs ask at the same time:
    the first to take the lock downloads, the others wait and then find the files complete."""
    import torchvision

    dataset_class = getattr(torchvision.datasets, TORCHVISION_CLASSES[name])
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(CACHE / f"{name}.lock"), contextlib.redirect_stdout(None):
        try:
            for train in (True, False):
                dataset_class(str(CACHE), train=train, download=True)
        except Exception as error:  # torchvision raises a RuntimeError or URLError when offline
            raise UserError(f"no {name} files found locally and the download failed ({type(error).__name__}); "
                            f"point data.root=<folder> or ${DATA_ENV} at a folder with the four idx files") from None
    return download_folder(name)


def locate(name: str, root):
    """The folder holding the dataset's four idx files, by the search order in this module's docstring; for
    dataset=synthetic, its synthetic.SyntheticSource (which takes no data.root)."""
    if name == synthetic.NAME:
        if root is not None:
            raise UserError(f"data.root={root}: dataset={synthetic.NAME} reads no files (its images are generated)")
        return synthetic.SyntheticSource()
    if root is not None:
        folder = Path(root).expanduser().resolve()
        if not has_all_files(folder):
            missing = [stem for stem in FILES.values() if not find_file(folder, stem)]
            raise UserError(f"data.root={folder} lacks {', '.join(missing)} (.gz or plain)")
        return folder
    candidates = []
    if os.environ.get(DATA_ENV):
        env_folder = Path(os.environ[DATA_ENV]).expanduser().resolve()
        # the variable may name the dataset folder itself or a folder holding mnist/ and fashion-mnist/
        candidates += [env_folder, env_folder / name.replace("_", "-"), env_folder / name]
    if name in DEBIAN_FOLDERS:
        candidates.append(DEBIAN_FOLDERS[name])
    for folder in candidates:
        if has_all_files(folder):
            return folder
    return download(name)


def read_images(folder: Path, split: str) -> torch.Tensor:
    """One split's images as floats in [0, 1], shape (N, 784), on the CPU."""
    images = read_idx(find_file(folder, FILES[f"{split}_images"]), IMAGE_MAGIC, EXPECTED_COUNT[split])
    return torch.from_numpy(images.copy()).flatten(1).float().div_(255)


def split_images(source, split: str):
    """One split's images, floats in [0, 1] of shape (N, 784) on the CPU: read from the folder's idx file, or
    for a synthetic.SyntheticSource generated for the rows sliced out only (a GeneratedImages)."""
    if isinstance(source, synthetic.SyntheticSource):
        return source.images(split)
    return read_images(source, split)


def label_name(folder) -> str:
    """What read_labels' labels are, for a picture's legend."""
    return synthetic.LABEL_NAME if isinstance(folder, synthetic.SyntheticSource) else "digit"


def read_labels(folder, split: str) -> torch.Tensor:
    """One split's class labels (0..9, int64), shape (N,), on the CPU; in the order of read_images. A
    synthetic.SyntheticSource gives the sector of each true latent's angle (0..7)."""
    if isinstance(folder, synthetic.SyntheticSource):
        return folder.labels(split)
    labels = read_idx(find_file(folder, FILES[f"{split}_labels"]), LABEL_MAGIC, EXPECTED_COUNT[split])
    return torch.from_numpy(labels.astype(np.int64))


def cpu_bernoulli(pixels, seed):
    """One Bernoulli draw of pixels made on the CPU, so the same seed gives the same images on any device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(pixels.cpu(), generator=generator).to(pixels.device)


class Split:
    """One split on the device: float pixels, either grey levels in [0, 1] or a fixed binary draw."""

    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels

    def __len__(self):
        return self.pixels.shape[0]

    def batches(self, batch_size):
        for start in range(0, len(self), batch_size):
            yield self.pixels[start:start + batch_size]


class TrainingData:
    """Training images with shuffling and (dynamic) binarization on the device.

    Each epoch's shuffle and binarization draws come from a generator seeded by (seed, epoch), so a run
    resumed at any epoch sees the same batches as an uninterrupted one.
    """

    def __init__(self, pixels, binarize, seed):
        self.pixels, self.binarize, self.seed = pixels, binarize, seed
        # each pixel's mean grey level (before any static draw), for model.output_bias=data_mean
        self.mean_pixel = pixels.mean(0)
        if binarize == "static":
            self.pixels = cpu_bernoulli(pixels, self.seed_of(-1))

    def __len__(self):
        return self.pixels.shape[0]

    def seed_of(self, epoch):
        return self.seed * 1_000_003 + epoch + 1

    def steps_per_epoch(self, batch_size):
        return (len(self) + batch_size - 1) // batch_size

    def epoch_batches(self, epoch, batch_size, start_step=0, generator_state=None):
        """Yield (step, batch, generator) for one epoch; start mid-epoch from a saved generator state.

        The order comes from a CPU generator, so it is the same on every device; the binarization draws
        come from a generator on the device (a draw per batch, no host transfer)."""
        order_generator = torch.Generator().manual_seed(self.seed_of(epoch))
        order = torch.randperm(len(self), generator=order_generator).to(self.pixels.device)
        generator = torch.Generator(self.pixels.device).manual_seed(self.seed_of(epoch))
        if generator_state is not None:
            generator.set_state(generator_state)
        for step in range(start_step, self.steps_per_epoch(batch_size)):
            batch = self.pixels[order[step * batch_size:(step + 1) * batch_size]]
            if self.binarize == "dynamic":
                batch = torch.bernoulli(batch, generator=generator)
            yield step, batch, generator


def evaluation_split(cfg, pixels, offset):
    """Validation (offset 0) or test (offset 1) images: one fixed draw shared by every run on every device,
    so all runs are scored on the same binary images."""
    if cfg.binarize == "none":
        return Split(pixels)
    return Split(cpu_bernoulli(pixels, cfg.eval_binarize_seed + offset))


def load_training(cfg, seed, device):
    """(data folder or synthetic source, training data, validation split) on the device: the last val_size
    training images are the validation split."""
    folder = locate(cfg.name, cfg.root)
    train_images = split_images(folder, "train")
    count = len(train_images)
    if cfg.val_size >= count:
        raise UserError(f"data.val_size={cfg.val_size} leaves no training images (the training set has {count})")
    train_end = count - cfg.val_size if cfg.train_size is None else min(cfg.train_size, count - cfg.val_size)
    train_part, val_part = train_images[:train_end].to(device), train_images[count - cfg.val_size:].to(device)
    return folder, TrainingData(train_part, cfg.binarize, seed), evaluation_split(cfg, val_part, 0)


def load_test(cfg, device):
    """(data folder or synthetic source, test split) on the device; reads only the test files."""
    folder = locate(cfg.name, cfg.root)
    test_images = split_images(folder, "test")
    test_images = test_images[:len(test_images) if cfg.test_size is None else cfg.test_size].to(device)
    return folder, evaluation_split(cfg, test_images, 1)
