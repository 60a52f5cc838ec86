"""Data loading through the user's code path: the real idx files, validation of bad files, splits, binarization,
and the download lock."""

import gzip
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from conftest import MNIST
from vae_compare import UserError, data

needs_mnist = pytest.mark.usefixtures("real_data")


def data_cfg(**overrides):
    cfg = {"name": "mnist", "root": str(MNIST), "binarize": "dynamic", "val_size": 10000, "train_size": None,
           "test_size": None, "eval_binarize_seed": 1234}
    return OmegaConf.create({**cfg, **overrides})


@pytest.fixture(scope="module")
def full_load(real_data):
    return load_all(data_cfg(), 0)


def load_all(cfg, seed):
    """(folder, training data, validation split, test split), loaded as a run and its evaluation do."""
    folder, train, val = data.load_training(cfg, seed, torch.device("cpu"))
    test_folder, test = data.load_test(cfg, torch.device("cpu"))
    assert test_folder == folder
    return folder, train, val, test


def test_real_mnist_splits_and_pixels(full_load):
    folder, train, val, test = full_load
    assert folder == MNIST
    assert (len(train), len(val), len(test)) == (50000, 10000, 10000)
    # the published mean training pixel is 33.318 / 255 over all 60,000 images
    images = data.read_idx(MNIST / "train-images-idx3-ubyte.gz", data.IMAGE_MAGIC, 60000)
    assert abs(images.mean() - 33.318) < 0.01
    assert torch.equal(train.pixels, torch.from_numpy(images[:50000].reshape(50000, -1).copy()).float() / 255)
    # validation and test are one fixed binary draw
    assert set(val.pixels.unique().tolist()) == {0.0, 1.0} and set(test.pixels.unique().tolist()) == {0.0, 1.0}


def test_dynamic_binarization_is_fresh_each_epoch_and_repeatable(full_load):
    _, train, _, _ = full_load
    _, first, _ = next(train.epoch_batches(0, 256))
    _, again, _ = next(train.epoch_batches(0, 256))
    _, other_epoch, _ = next(train.epoch_batches(1, 256))
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch)
    assert set(first.unique().tolist()) == {0.0, 1.0}


def test_epoch_resumes_mid_way_with_the_same_batches(full_load):
    _, train, _, _ = full_load
    uninterrupted = [batch for _, batch, _ in train.epoch_batches(3, 4096)]
    batches = train.epoch_batches(3, 4096)
    for _ in range(5):
        step, _, generator = next(batches)
    resumed = [batch for _, batch, _ in train.epoch_batches(3, 4096, step + 1, generator.get_state())]
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted[5:], resumed, strict=True))


@needs_mnist
@pytest.mark.parametrize("mode", ["static", "none"])
def test_static_and_grey_levels(mode):
    _, train, _, test = load_all(data_cfg(binarize=mode, train_size=1000, test_size=100), 0)
    _, batch_a, _ = next(train.epoch_batches(0, 1000))
    _, batch_b, _ = next(train.epoch_batches(1, 1000))
    assert torch.allclose(batch_a.sum(0), batch_b.sum(0))  # the same images every epoch, only shuffled
    binary = set(batch_a.unique().tolist()) == {0.0, 1.0}
    assert binary == (mode == "static")
    assert (set(test.pixels.unique().tolist()) == {0.0, 1.0}) == (mode == "static")


@needs_mnist
def test_plain_idx_files_work_too(tmp_path):
    for stem in data.FILES.values():
        (tmp_path / stem).write_bytes(gzip.decompress((MNIST / f"{stem}.gz").read_bytes()))
    assert data.locate("mnist", str(tmp_path)) == tmp_path
    assert data.read_idx(tmp_path / data.FILES["test_images"], data.IMAGE_MAGIC, 10000).shape == (10000, 28, 28)


@needs_mnist
def test_wrong_kind_of_idx_file_is_named(tmp_path):
    labels = tmp_path / "labels.gz"
    labels.write_bytes((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(UserError, match="magic 2049, expected 2051"):
        data.read_idx(labels, data.IMAGE_MAGIC, 10000)
    with pytest.raises(UserError, match=r"has shape \(10000, 28, 28\), expected \(60000, 28, 28\)"):
        data.read_idx(MNIST / "t10k-images-idx3-ubyte.gz", data.IMAGE_MAGIC, 60000)


@needs_mnist
def test_test_labels_are_the_digits_of_the_test_images(tmp_path):
    labels = data.read_labels(MNIST, "test")
    assert labels.dtype == torch.int64 and labels.shape == (10000,)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the published first ten test digits
    assert torch.bincount(labels).tolist()[:2] == [980, 1135]  # zeros and ones in the MNIST test set
    images = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(images)  # an images file under the labels' name
    with pytest.raises(UserError, match="magic 2051, expected 2049"):
        data.read_labels(tmp_path, "test")


@needs_mnist
def test_environment_variable_points_at_the_data(monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(MNIST.parent))
    assert data.locate("mnist", None) == MNIST


def test_a_folder_without_the_files_is_named(tmp_path):
    with pytest.raises(UserError, match="lacks"):
        data.locate("mnist", str(tmp_path))


class SlowDownload:
    """Stands in for torchvision's MNIST(root, train, download=True): finds its split's files in root/MNIST/raw,
    else writes them a chunk at a time (the writer's pid, so a file written by two jobs shows it), logging each
    download's start and end in root/downloads.log."""

    def __init__(self, root, train, download):
        raw = Path(root) / "MNIST" / "raw"
        split = "train" if train else "test"
        stems = [data.FILES[f"{split}_{kind}"] for kind in ("images", "labels")]
        if all((raw / stem).exists() for stem in stems):
            return
        raw.mkdir(parents=True, exist_ok=True)
        self.log = Path(root) / "downloads.log"
        self.note(f"start {split} {os.getpid()}")
        for stem in stems:
            with open(raw / stem, "wb") as file:
                for _ in range(2):
                    file.write(f"{os.getpid()}\n".encode())
                    file.flush()
                    time.sleep(0.05)
        self.note(f"end {split} {os.getpid()}")

    def note(self, line):
        with open(self.log, "a") as log:
            log.write(line + "\n")


def download_after(barrier):
    barrier.wait()
    data.download("mnist")


def test_jobs_downloading_at_once_download_once_and_leave_whole_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(torchvision.datasets, "MNIST", SlowDownload)
    # forked, so each job sees the stand-in; three jobs released together, as a sweep's jobs start
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(3)
    jobs = [fork.Process(target=download_after, args=(barrier,)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    log = (data.CACHE / "downloads.log").read_text().split()
    writer = log[2]
    # one job downloaded both splits; the others waited for the lock, then found the files
    assert log == ["start", "train", writer, "end", "train", writer, "start", "test", writer, "end", "test", writer]
    raw = data.download_folder("mnist")
    for stem in data.FILES.values():
        assert (raw / stem).read_text() == f"{writer}\n" * 2
