"""a. One training epoch of this project's loop (Run.train_epoch) against the PyTorch-examples VAE pipeline
(torchvision MNIST + ToTensor + DataLoader): the same 50k images, batch 128, 784-400-20, grey levels."""

import gzip
import itertools
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import nn

from benchmark.timing import console, fmt, interleaved_times, ratios, spread, verdict, wanted
from benchmark.workloads import BATCH, live_progress
from vae_compare import data
from vae_compare.config import compose
from vae_compare.train import Run, SignalGuard

TRAIN_IMAGES = 50_000
# epoch time ours / baseline
TARGET = ("<=", 0.4)


class TutorialVAE(nn.Module):
    """The VAE of github.com/pytorch/examples vae/main.py."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def tutorial_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def torchvision_layout(data_root, folder):
    """<folder>/MNIST/raw/ with decompressed copies of the idx files, as torchvision's MNIST expects."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in data.FILES.values():
        source = data.find_file(data_root, stem)
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)


def tutorial_epoch(model, optimizer, loader, device, max_batches):
    """The examples' train() loop, over the first max_batches batches (None: all); returns images seen."""
    model.train()
    train_loss, images = 0.0, 0
    for batch, _ in itertools.islice(loader, max_batches):
        batch = batch.to(device)
        optimizer.zero_grad()
        recon, mu, logvar = model(batch)
        loss = tutorial_loss(recon, batch, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        images += batch.shape[0]
    return images


def tutorial_pipeline(data_root, folder, device, max_batches):
    """(one-epoch function, images per epoch) of the PyTorch-examples pipeline on the first 50k images."""
    import torchvision
    from torchvision import transforms

    torchvision_layout(data_root, folder)
    dataset = torchvision.datasets.MNIST(str(folder), train=True, download=False, transform=transforms.ToTensor())
    subset = torch.utils.data.Subset(dataset, range(TRAIN_IMAGES))
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    loader = torch.utils.data.DataLoader(subset, batch_size=BATCH, shuffle=True, **kwargs)
    torch.manual_seed(0)
    model = TutorialVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = min(TRAIN_IMAGES, max_batches * BATCH) if max_batches else TRAIN_IMAGES
    return (lambda: tutorial_epoch(model, optimizer, loader, device, max_batches)), images


def our_pipeline(data_root, folder, device, guard, max_batches):
    """(one-epoch function, images per epoch) of Run.train_epoch, same architecture, grey levels as
    Bernoulli means (data.binarize=none), the first 50k training images (data.val_size=10000)."""
    overrides = [f"data.root={data_root}", "data.val_size=10000", "data.binarize=none", "family=diag",
                 "latent_dim=20", "model.hidden=[400]", f"train.batch_size={BATCH}", f"device={device.type}"]
    if max_batches:
        overrides.append(f"data.train_size={max_batches * BATCH}")
    run = Run(compose(overrides), folder)
    progress, task = live_progress()
    return (lambda: run.train_epoch(progress, task, guard)), len(run.train_data)


def measure(args, device):
    max_batches = 40 if args.quick else None
    with tempfile.TemporaryDirectory() as ours_folder, tempfile.TemporaryDirectory() as tutorial_folder, \
            SignalGuard() as guard:
        ours, ours_images = our_pipeline(args.data_root, Path(ours_folder), device, guard, max_batches)
        tutorial, tutorial_images = tutorial_pipeline(args.data_root, Path(tutorial_folder), device, max_batches)
        times = interleaved_times({"ours": ours, "tutorial": tutorial}, device, args.repeats)
    ours_s = spread([t * TRAIN_IMAGES / ours_images for t in times["ours"]])
    tutorial_s = spread([t * TRAIN_IMAGES / tutorial_images for t in times["tutorial"]])
    ratio = spread(ratios(times["ours"], times["tutorial"]))
    how = f"first {max_batches} batches, extrapolated to 50k images" if max_batches else "full 50k-image epochs"
    table = Table(title=f"a. seconds per training epoch ({how}; batch {BATCH}, 784-400-20 diag, grey levels, Adam 1e-3; "
                        "median (interquartile range) over interleaved rounds)",
                  caption="Both: the first 50k MNIST training images, grey levels as Bernoulli means (the examples do "
                          "not binarize, so data.binarize=none), summed BCE + closed-form KL, sigma = exp(logvar / 2). "
                          "Our encoder head is fc21 and fc22 as one 400x40 layer; our loop also does its per-step "
                          "gradient-norm and finiteness checks and updates a (terminal) progress bar.")
    for column in ("pipeline", "s / epoch", "images / s"):
        table.add_column(column, justify="right" if column != "pipeline" else "left")
    table.add_row("ours: Run.train_epoch, data.binarize=none", fmt(ours_s, 2), f"{TRAIN_IMAGES / ours_s['median']:,.0f}")
    table.add_row("baseline: PyTorch examples VAE, DataLoader", fmt(tutorial_s, 2),
                  f"{TRAIN_IMAGES / tutorial_s['median']:,.0f}")
    table.add_row("ratio ours / baseline (per round)", fmt(ratio), "")
    console.print(table)
    return {"ours_seconds": ours_s, "baseline_seconds": tutorial_s, "ratio": ratio, "extrapolated": bool(max_batches)}


def target_rows(result):
    """The summary's rows (target, wanted, figure, where, verdict) of this comparison."""
    ratio = result["ratio"]
    return [("a. epoch time ours / PyTorch-examples baseline", wanted(TARGET), ratio, "", verdict(ratio, TARGET))]
