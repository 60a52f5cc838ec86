"""Speed of vae_compare against plain PyTorch and against the machine, with targets.

    .venv/bin/python scripts/bench.py [--quick] [--device auto|cpu|cuda] [--repeats N] [--json PATH]

a. one training epoch of this project's loop (Run.train_epoch) against the PyTorch-examples VAE pipeline
   (torchvision MNIST + ToTensor + DataLoader), same 50k images, batch 128, 784-400-20, grey levels;
b. training-step time of cholesky and lowrank over diag per latent_dim, against the ratio of FLOPs;
c. closed-form KL + rsample (forward and backward) of each family against torch.distributions;
d. achieved GFLOP/s of training and of IWAE evaluation against a measured float32 torch.mm rate.

Every figure is the median of --repeats timed runs after warm-up.
"""

import argparse
import gzip
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import distributions as D, nn

from vae_compare import UserError, data, evaluate
from vae_compare.cli import compose
from vae_compare.model import IMAGE_SIZE, build_model
from vae_compare.posteriors import FAMILIES
from vae_compare.train import Run, SignalGuard, make_optimizer, pick_device, train_step

REPO = Path(__file__).resolve().parents[1]
LATENT_DIMS = (2, 8, 16, 32, 64, 128)
FAMILY_NAMES = tuple(FAMILIES)  # diag first: it is the reference of b
RANK = 4
BATCH = 128
TRAIN_IMAGES = 50_000
TARGETS = {"a": 0.4, "b": 1.15, "c": 1.0, "d": 0.5}
console = Console()


# ---- timing ---------------------------------------------------------------------------------------
def seconds_of(fn, device):
    evaluate.synchronize(device)
    start = time.perf_counter()
    fn()
    evaluate.synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(fns, device, repeats, warmup=1):
    """Median wall time of each fn in a dict, after `warmup` untimed calls each. The fns are timed in
    turn, one call each per round, so a change in the machine's load falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds_of(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def per_call_medians(fns, device, repeats, block_seconds):
    """interleaved_medians of one call each, every timing covering as many calls in a row as fill
    about block_seconds (judged from one call after a first one), so short calls rise above timer noise."""
    blocks, calls = {}, {}
    for name, fn in fns.items():
        fn()
        calls[name] = max(1, min(1000, round(block_seconds / seconds_of(fn, device))))
        blocks[name] = lambda fn=fn, n=calls[name]: [fn() for _ in range(n)]
    seconds = interleaved_medians(blocks, device, repeats)
    return {name: seconds[name] / calls[name] for name in fns}


def machine_lines(device):
    lines = [f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
             f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs visible"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        if models:
            lines.append(f"CPU: {models[0]} x {len(models)}")
    return lines


# ---- a. one epoch: this project's loop against the PyTorch-examples pipeline -------------------------
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
    progress = Progress(disable=True)
    task = progress.add_task("", total=1, elbo="")

    return (lambda: run.train_epoch(progress, task, guard)), len(run.train_data)


def section_a(args, device):
    max_batches = 40 if args.quick else None
    with tempfile.TemporaryDirectory() as ours_folder, tempfile.TemporaryDirectory() as tutorial_folder, \
            SignalGuard() as guard:
        ours, ours_images = our_pipeline(args.data_root, Path(ours_folder), device, guard, max_batches)
        tutorial, tutorial_images = tutorial_pipeline(args.data_root, Path(tutorial_folder), device, max_batches)
        seconds = interleaved_medians({"ours": ours, "tutorial": tutorial}, device, args.repeats)
    ours = seconds["ours"] * TRAIN_IMAGES / ours_images
    tutorial = seconds["tutorial"] * TRAIN_IMAGES / tutorial_images
    how = f"first {max_batches} batches, extrapolated to 50k images" if max_batches else "full 50k-image epochs"
    table = Table(title=f"a. seconds per training epoch ({how}; batch {BATCH}, 784-400-20 diag, grey levels, Adam 1e-3)",
                  caption="Both: the first 50k MNIST training images, grey levels as Bernoulli means (the examples do "
                          "not binarize, so data.binarize=none), summed BCE + closed-form KL, sigma = exp(logvar / 2). "
                          "Our encoder head is fc21 and fc22 as one 400x40 layer; our loop also does its per-step "
                          "gradient-norm and finiteness checks.")
    for column in ("pipeline", "s / epoch", "images / s"):
        table.add_column(column, justify="right" if column != "pipeline" else "left")
    table.add_row("ours: Run.train_epoch, data.binarize=none", f"{ours:.2f}", f"{TRAIN_IMAGES / ours:,.0f}")
    table.add_row("baseline: PyTorch examples VAE, DataLoader", f"{tutorial:.2f}", f"{TRAIN_IMAGES / tutorial:,.0f}")
    table.add_row("ratio ours / baseline", f"{ours / tutorial:.3f}", "")
    console.print(table)
    return {"ours_seconds": ours, "baseline_seconds": tutorial, "ratio": ours / tutorial, "extrapolated": bool(max_batches)}


# ---- b. training step per family and latent_dim, against FLOPs ------------------------------------
def linear_flops(sizes):
    """Forward FLOPs per image of an MLP with these layer sizes: 2 * in * out per Linear."""
    return sum(2 * fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


def family_flops(family, d, k=RANK):
    """Forward FLOPs per image of the family's products in a training step (elementwise work on d
    numbers not counted).

    cholesky: L eps from the d(d-1)/2 packed entries (a multiply and an add each) and their squares
    for the KL's trace: 2d(d-1). lowrank: V eps_k 2dk, the capacitance V^T D^-1 V 2dk^2 and the
    trace of V V^T 2dk (the k x k Cholesky is below k^3 and ignored).
    """
    return {"diag": 0, "cholesky": 2 * d * (d - 1), "lowrank": 4 * d * k + 2 * d * k * k}[family]


def step_flops(model):
    """FLOPs of one training step on BATCH images: 3 x forward (forward + backward)."""
    encoder = [m.in_features for m in model.encoder if isinstance(m, nn.Linear)] + [model.head_size]
    decoder = [m.in_features for m in model.decoder if isinstance(m, nn.Linear)] + [IMAGE_SIZE]
    forward = linear_flops(encoder) + linear_flops(decoder) + family_flops(model.family.name, model.latent_dim)
    return 3 * forward * BATCH


def training_model(family, latent_dim, device):
    """The default model (hidden [512, 256]) of a family."""
    torch.manual_seed(0)
    cfg = compose([f"family={family}", f"latent_dim={latent_dim}", f"device={device.type}"])
    return build_model(cfg).to(device)


def step_function(model, batch):
    """One training step exactly as Run.train_epoch takes it (fused Adam, gradient norm, no clipping)."""
    optimizer = make_optimizer(model, 1e-3)
    return lambda: train_step(model, optimizer, batch, 1.0, math.inf)


def section_b(args, device, pixels):
    batch = pixels[:BATCH]
    rows = []
    for d in LATENT_DIMS:
        models = {family: training_model(family, d, device) for family in FAMILY_NAMES}
        steps = {family: step_function(model, batch) for family, model in models.items()}
        seconds = per_call_medians(steps, device, args.repeats, args.block_seconds)
        rows.append({"latent_dim": d, **{family: {"seconds": seconds[family], "flops": step_flops(model)}
                                         for family, model in models.items()}})
    table = Table(title=f"b. training step (batch {BATCH}, hidden [512, 256], lowrank rank {RANK}) over diag; "
                        "FLOPs = 3 x (2 in out per Linear + family matrix products)")
    for column in ("d", "diag ms", "family", "ms", "time ratio", "FLOP ratio", "time / FLOP ratio"):
        table.add_column(column, justify="right")
    for row in rows:
        diag = row["diag"]
        for family in FAMILY_NAMES[1:]:
            figures = row[family]
            figures["time_ratio"] = figures["seconds"] / diag["seconds"]
            figures["flop_ratio"] = figures["flops"] / diag["flops"]
            figures["excess"] = figures["time_ratio"] / figures["flop_ratio"]
            table.add_row(str(row["latent_dim"]), f"{diag['seconds'] * 1e3:.2f}", family, f"{figures['seconds'] * 1e3:.2f}",
                          f"{figures['time_ratio']:.3f}", f"{figures['flop_ratio']:.3f}", f"{figures['excess']:.3f}")
    console.print(table)
    return rows


# ---- c. closed-form KL + rsample against torch.distributions --------------------------------------
def posterior_inputs(family, d, device):
    """Leaf tensors (mean, scale, offdiag) of one batch, as the encoder head would give them."""
    generator = torch.Generator(device).manual_seed(d)
    offdiag_size = FAMILIES[family].offdiag_size(d, RANK)
    mean = torch.randn(BATCH, d, generator=generator, device=device)
    scale = torch.rand(BATCH, d, generator=generator, device=device) + 0.5
    offdiag = 0.1 * torch.randn(BATCH, offdiag_size, generator=generator, device=device)
    return [t.requires_grad_() for t in (mean, scale, offdiag)]


def ours_loss(family, mean, scale, offdiag):
    q = FAMILIES[family](mean, scale, offdiag)
    return q.rsample_z(1).sum() + q.kl_to_standard_normal().sum()


def lower_triangular(scale, offdiag):
    d = scale.shape[-1]
    rows, cols = torch.tril_indices(d, d, offset=-1, device=scale.device)
    lower = scale.new_zeros(scale.shape + (d,))
    lower[..., rows, cols] = offdiag
    return lower + torch.diag_embed(scale)


def torch_posterior(family, mean, scale, offdiag):
    if family == "diag":
        return D.Independent(D.Normal(mean, scale, validate_args=False), 1, validate_args=False)
    if family == "cholesky":
        return D.MultivariateNormal(mean, scale_tril=lower_triangular(scale, offdiag), validate_args=False)
    return D.LowRankMultivariateNormal(mean, offdiag.unflatten(-1, (mean.shape[-1], RANK)), scale.square(),
                                       validate_args=False)


def torch_prior(family, d, device):
    zeros, ones = torch.zeros(d, device=device), torch.ones(d, device=device)
    if family == "diag":
        return D.Independent(D.Normal(zeros, ones, validate_args=False), 1, validate_args=False)
    if family == "cholesky":
        return D.MultivariateNormal(zeros, scale_tril=torch.eye(d, device=device), validate_args=False)
    return D.LowRankMultivariateNormal(zeros, torch.zeros(d, 1, device=device), ones, validate_args=False)


def section_c(args, device):
    rows = []
    for d in LATENT_DIMS:
        row = {"latent_dim": d}
        for family in FAMILY_NAMES:
            inputs = posterior_inputs(family, d, device)
            prior = torch_prior(family, d, device)

            def ours():
                torch.autograd.grad(ours_loss(family, *inputs), inputs, allow_unused=True)

            def reference():
                q = torch_posterior(family, *inputs)
                loss = q.rsample().sum() + D.kl_divergence(q, prior).sum()
                torch.autograd.grad(loss, inputs, allow_unused=True)

            seconds = per_call_medians({"ours": ours, "torch": reference}, device, args.repeats, args.block_seconds)
            row[family] = {"ours_seconds": seconds["ours"], "torch_seconds": seconds["torch"],
                           "speedup": seconds["torch"] / seconds["ours"]}
        rows.append(row)
    table = Table(title=f"c. KL to N(0, I) + rsample, forward and backward, batch {BATCH}, float32; "
                        "speedup = torch.distributions (validate_args=False) time / ours")
    for column in ("d", "family", "ours µs", "torch.distributions µs", "speedup"):
        table.add_column(column, justify="right")
    for row in rows:
        for family in FAMILY_NAMES:
            f = row[family]
            table.add_row(str(row["latent_dim"]), family, f"{f['ours_seconds'] * 1e6:.0f}",
                          f"{f['torch_seconds'] * 1e6:.0f}", f"{f['speedup']:.2f}")
    console.print(table)
    return rows


# ---- d. achieved GFLOP/s against the measured matrix-multiply rate --------------------------------
def matmul(rows, inner, cols, device):
    """(function, FLOPs) of one float32 torch.mm of the given shape."""
    a = torch.randn(rows, inner, device=device)
    b = torch.randn(inner, cols, device=device)
    return (lambda: torch.mm(a, b)), 2 * rows * inner * cols


def section_d(args, device, pixels, b_rows):
    """IWAE evaluation (evaluate.iwae_log_px, 100 test images; FLOPs = 2 in out per decoder Linear per
    sample) and torch.mm of a square shape and of the IWAE decoder's widest layer, timed in turn."""

    model = training_model("diag", 16, device).eval()
    split = data.Split(pixels[-100:])
    samples = 100 if args.quick else 1000
    sizes = [m.in_features for m in model.decoder if isinstance(m, nn.Linear)] + [IMAGE_SIZE]
    chunk = min(samples, evaluate.default_chunk_size(model, evaluate.IWAE_BATCH_SIZE, device))
    square = 1024 if args.quick else 2048
    m, k, n = chunk * len(split), sizes[-2], sizes[-1]
    iwae_name = f"IWAE iwae_log_px, 100 images, k={samples}"
    work = {f"mm {square}x{square} @ {square}x{square}": matmul(square, square, square, device),
            f"mm {m}x{k} @ {k}x{n} (IWAE decoder layer)": matmul(m, k, n, device),
            iwae_name: ((lambda: evaluate.iwae_log_px(model, split, samples)), linear_flops(sizes) * len(split) * samples)}
    seconds = interleaved_medians({name: fn for name, (fn, _) in work.items()}, device, args.repeats)
    rates = {name: flops / seconds[name] / 1e9 for name, (_, flops) in work.items()}
    peak = max(rate for name, rate in rates.items() if name.startswith("mm"))
    for row in b_rows:
        if row["latent_dim"] == 16:
            for family in FAMILY_NAMES:
                rates[f"training step {family} d=16 (b's FLOPs)"] = row[family]["flops"] / row[family]["seconds"] / 1e9
    table = Table(title="d. achieved float32 GFLOP/s against the best measured torch.mm rate")
    for column in ("workload", "GFLOP/s", "% of mm"):
        table.add_column(column, justify="right" if column != "workload" else "left")
    for name, rate in rates.items():
        table.add_row(name, f"{rate:.1f}", f"{100 * rate / peak:.0f}")
    console.print(table)
    return {"gflops": rates, "peak_gflops": peak, "iwae_seconds": seconds[iwae_name],
            "iwae_fraction_of_peak": rates[iwae_name] / peak}


# ---- targets --------------------------------------------------------------------------------------
def targets(results):
    worst_b = max((row[f]["excess"], f, row["latent_dim"]) for row in results["b"] for f in FAMILY_NAMES[1:])
    worst_c = min((row[f]["speedup"], f, row["latent_dim"]) for row in results["c"] for f in FAMILY_NAMES)
    checks = [
        ("a. epoch time ours / PyTorch-examples baseline", f"≤ {TARGETS['a']}", results["a"]["ratio"],
         results["a"]["ratio"] <= TARGETS["a"], ""),
        ("b. worst (time ratio / FLOP ratio) over diag", f"≤ {TARGETS['b']}", worst_b[0],
         worst_b[0] <= TARGETS["b"], f"{worst_b[1]} d={worst_b[2]}"),
        ("c. slowest speedup over torch.distributions", f"> {TARGETS['c']}", worst_c[0],
         worst_c[0] > TARGETS["c"], f"{worst_c[1]} d={worst_c[2]}"),
        ("d. IWAE GFLOP/s / best torch.mm GFLOP/s", f"≥ {TARGETS['d']}", results["d"]["iwae_fraction_of_peak"],
         results["d"]["iwae_fraction_of_peak"] >= TARGETS["d"], ""),
    ]
    table = Table(title="targets")
    for column in ("target", "wanted", "measured", "where", "result"):
        table.add_column(column, justify="left" if column in ("target", "where") else "right")
    for name, wanted, value, passed, where in checks:
        table.add_row(name, wanted, f"{value:.3f}", where, "[green]PASS[/green]" if passed else "[red]FAIL[/red]")
    console.print(table)
    return [{"target": name, "wanted": wanted, "measured": value, "where": where, "pass": passed}
            for name, wanted, value, passed, where in checks]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="folder with the four MNIST idx files (default: found as "
                                            "vae-compare finds them: $VAE_COMPARE_DATA, then a download)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a pass in under a minute")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (default 5, --quick 3)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.block_seconds = 0.03 if args.quick else 0.2  # length of one timing of a short call, in b and c
    return args


def main():
    args = parse_args()
    try:
        device = pick_device(args.device)
        args.data_root = data.locate("mnist", args.data_root)
        _, images = data.load_arrays("mnist", args.data_root)
    except UserError as error:
        sys.exit(f"bench: {error}")
    header = machine_lines(device) + [f"repeats {args.repeats}" + (", --quick" if args.quick else "")]
    for line in header:
        console.print(line)
    pixels = torch.from_numpy(images["test"].copy()).to(device).flatten(1).float().div_(255)
    results = {"machine": header, "a": section_a(args, device)}
    results["b"] = section_b(args, device, pixels)
    results["c"] = section_c(args, device)
    results["d"] = section_d(args, device, pixels, results["b"])
    results["targets"] = targets(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        console.print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
