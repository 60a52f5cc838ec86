"""Speed of vae_compare against plain PyTorch and against the machine, with targets.

    .venv/bin/python scripts/bench.py [--quick] [--device auto|cpu|cuda] [--repeats N] [--json PATH] [--only a,e]

a. one training epoch of this project's loop (Run.train_epoch) against the PyTorch-examples VAE pipeline
   (torchvision MNIST + ToTensor + DataLoader), same 50k images, batch 128, 784-400-20, grey levels;
b. training-step time of cholesky and lowrank over diag per latent_dim, against the ratio of FLOPs;
c. closed-form KL + rsample (forward and backward) of each family against torch.distributions;
d. achieved GFLOP/s of IWAE evaluation against a measured float32 torch.mm rate;
e. ms per step at batch 20 in burda2016 shapes (784-200-200-50 tanh, diag): the epoch loop
   (Run.train_epoch on a slice) and train_step alone, against the step's FLOP time at the measured
   torch.mm rate.

Every comparison is timed interleaved: one round times each side once, in turn (A, B, then B, A in the
next round, so neither side always runs first), and a ratio is taken within each round, so a change in
the machine's load between rounds falls on both sides of that ratio. A figure is the median of the
per-round ratios, with their spread: the interquartile range (and min-max, in the JSON). A target is
PASS when the whole interquartile range is on its good side, FAIL when the whole range is on the bad
side, and UNCLEAR when the range straddles the target (too noisy to judge: rerun on a quieter machine
or with more --repeats). The load average is printed before and after.
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
from vae_compare.posteriors import FAMILIES, Noise
from vae_compare.train import Run, SignalGuard, flush_denormals, make_optimizer, pick_device, progress_columns, train_step

REPO = Path(__file__).resolve().parents[1]
LATENT_DIMS = (2, 8, 16, 32, 64, 128)
# the families the targets are about (the others have no FLOP count here); diag first: it is b's reference
FAMILY_NAMES = ("diag", "cholesky", "lowrank")
RANK = 4
BATCH = 128
TRAIN_IMAGES = 50_000
BURDA_BATCH = 20
# (comparison, wanted value): "<=" and ">=" / ">" say on which side of the value a figure passes
TARGETS = {"a": ("<=", 0.4), "b": ("<=", 1.15), "c": (">", 1.0), "d": (">=", 0.5), "e": ("<=", 3.0)}
# wide tables when the output is a file or a pipe
console = Console() if sys.stdout.isatty() else Console(width=160)


# ---- timing ---------------------------------------------------------------------------------------
def seconds_of(fn, device):
    evaluate.synchronize(device)
    start = time.perf_counter()
    fn()
    evaluate.synchronize(device)
    return time.perf_counter() - start


def interleaved_times(fns, device, repeats, warmup=1):
    """Wall times of each fn in a dict, one list per fn with one entry per round, after `warmup` untimed
    calls each. Each round times every fn once, in turn; the order is reversed every other round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    for round_index in range(repeats):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            times[name].append(seconds_of(fns[name], device))
    return times


def per_call_times(fns, device, repeats, block_seconds):
    """interleaved_times of one call each, every timing covering as many calls in a row as fill about
    block_seconds (judged from one call after a first one), so short calls rise above timer noise."""
    blocks, calls = {}, {}
    for name, fn in fns.items():
        fn()
        calls[name] = max(1, min(1000, round(block_seconds / seconds_of(fn, device))))
        blocks[name] = lambda fn=fn, n=calls[name]: [fn() for _ in range(n)]
    times = interleaved_times(blocks, device, repeats)
    return {name: [t / calls[name] for t in values] for name, values in times.items()}


def spread(values):
    """Median, quartiles and extremes of per-round figures."""
    values = sorted(values)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": values[0], "max": values[-1],
            "n": len(values)}


def ratios(numerators, denominators):
    """Per-round ratios of two interleaved timings."""
    return [a / b for a, b in zip(numerators, denominators)]


def verdict(figure, target):
    """PASS, FAIL or UNCLEAR for a spread against a target (op, value), judged on the interquartile range."""
    op, value = target
    low, high = figure["q1"], figure["q3"]
    good = {"<=": lambda x: x <= value, ">=": lambda x: x >= value, ">": lambda x: x > value}[op]
    if good(low) and good(high):
        return "PASS"
    if not good(low) and not good(high):
        return "FAIL"
    return "UNCLEAR"


def worst_verdict(verdicts):
    """A target over several figures (every size): FAIL if any fails, else UNCLEAR if any is, else PASS."""
    return "FAIL" if "FAIL" in verdicts else "UNCLEAR" if "UNCLEAR" in verdicts else "PASS"


def fmt(figure, digits=3):
    return f"{figure['median']:.{digits}f} ({figure['q1']:.{digits}f}–{figure['q3']:.{digits}f})"


def load_average():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"] * 3


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


def live_progress():
    """(progress, task) as training shows them on a terminal (rendered to nowhere), so the bench pays for the
    progress bar as a user's run does."""
    sink = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)
    progress = Progress(*progress_columns(), console=sink, redirect_stdout=False, redirect_stderr=False)
    progress.start()
    return progress, progress.add_task("training", total=1, elbo="")


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
    progress, task = live_progress()
    return (lambda: run.train_epoch(progress, task, guard)), len(run.train_data)


def section_a(args, device):
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


def step_flops(model, batch=BATCH):
    """FLOPs of one training step on `batch` images: 3 x forward (forward + backward)."""
    encoder = [m.in_features for m in model.encoder if isinstance(m, nn.Linear)] + [model.head_size]
    decoder = [m.in_features for m in model.decoder if isinstance(m, nn.Linear)] + [IMAGE_SIZE]
    forward = linear_flops(encoder) + linear_flops(decoder) + family_flops(model.family.name, model.latent_dim)
    return 3 * forward * batch


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
        times = per_call_times(steps, device, args.short_repeats, args.block_seconds)
        row = {"latent_dim": d}
        for family, model in models.items():
            row[family] = {"seconds": spread(times[family]), "flops": step_flops(model)}
        for family in FAMILY_NAMES[1:]:
            figures = row[family]
            figures["flop_ratio"] = figures["flops"] / row["diag"]["flops"]
            per_round = ratios(times[family], times["diag"])
            figures["time_ratio"] = spread(per_round)
            figures["excess"] = spread([r / figures["flop_ratio"] for r in per_round])
            figures["verdict"] = verdict(figures["excess"], TARGETS["b"])
        rows.append(row)
    table = Table(title=f"b. training step (batch {BATCH}, hidden [512, 256], lowrank rank {RANK}) over diag; "
                        "FLOPs = 3 x (2 in out per Linear + family matrix products); median (IQR) of per-round ratios")
    for column in ("d", "diag ms", "family", "ms", "time ratio", "FLOP ratio", "time / FLOP ratio", ""):
        table.add_column(column, justify="right")
    for row in rows:
        diag = row["diag"]
        for family in FAMILY_NAMES[1:]:
            figures = row[family]
            table.add_row(str(row["latent_dim"]), f"{diag['seconds']['median'] * 1e3:.2f}", family,
                          f"{figures['seconds']['median'] * 1e3:.2f}", fmt(figures["time_ratio"]),
                          f"{figures['flop_ratio']:.3f}", fmt(figures["excess"]), figures["verdict"])
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
    return q.rsample(1).sum() + q.kl_to_standard_normal().sum()


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

            times = per_call_times({"ours": ours, "torch": reference}, device, args.short_repeats, args.block_seconds)
            speedup = spread(ratios(times["torch"], times["ours"]))
            row[family] = {"ours_seconds": spread(times["ours"]), "torch_seconds": spread(times["torch"]),
                           "speedup": speedup, "verdict": verdict(speedup, TARGETS["c"])}
        rows.append(row)
    table = Table(title=f"c. KL to N(0, I) + rsample, forward and backward, batch {BATCH}, float32; "
                        "speedup = torch.distributions (validate_args=False) time / ours, median (IQR) per round")
    for column in ("d", "family", "ours µs", "torch.distributions µs", "speedup", ""):
        table.add_column(column, justify="right")
    for row in rows:
        for family in FAMILY_NAMES:
            f = row[family]
            table.add_row(str(row["latent_dim"]), family, f"{f['ours_seconds']['median'] * 1e6:.0f}",
                          f"{f['torch_seconds']['median'] * 1e6:.0f}", fmt(f["speedup"], 2), f["verdict"])
    console.print(table)
    return rows


# ---- d. achieved GFLOP/s against the measured matrix-multiply rate --------------------------------
def matmul(rows, inner, cols, device):
    """(function, FLOPs) of one float32 torch.mm of the given shape."""
    a = torch.randn(rows, inner, device=device)
    b = torch.randn(inner, cols, device=device)
    return (lambda: torch.mm(a, b)), 2 * rows * inner * cols


def square_matmul(args, device):
    square = 1024 if args.quick else 2048
    return f"mm {square}x{square} @ {square}x{square}", matmul(square, square, square, device)


def section_d(args, device, pixels, b_rows):
    """IWAE evaluation (evaluate.iwae_log_px, 100 test images; FLOPs = 2 in out per decoder Linear per
    sample), torch.mm of a square shape and of the IWAE decoder's widest layer, interleaved; the fraction
    of the matmul rate is taken per round against the faster of the two mm shapes in that round."""
    model = training_model("diag", 16, device).eval()
    split = data.Split(pixels[-100:])
    samples = 100 if args.quick else 1000
    sizes = [m.in_features for m in model.decoder if isinstance(m, nn.Linear)] + [IMAGE_SIZE]
    chunk = min(samples, evaluate.default_chunk_size(model, evaluate.IWAE_BATCH_SIZE, device))
    m, k, n = chunk * len(split), sizes[-2], sizes[-1]
    iwae_name = f"IWAE iwae_log_px, 100 images, k={samples}"
    square_name, square = square_matmul(args, device)
    work = {square_name: square, f"mm {m}x{k} @ {k}x{n} (IWAE decoder layer)": matmul(m, k, n, device),
            iwae_name: ((lambda: evaluate.iwae_log_px(model, split, samples)), linear_flops(sizes) * len(split) * samples)}
    times = interleaved_times({name: fn for name, (fn, _) in work.items()}, device, args.repeats)
    rates = {name: [flops / t / 1e9 for t in times[name]] for name, (_, flops) in work.items()}
    mm_names = [name for name in work if name.startswith("mm")]
    peaks = [max(rates[name][i] for name in mm_names) for i in range(args.repeats)]
    fraction = spread([iwae / peak for iwae, peak in zip(rates[iwae_name], peaks)])
    figures = {name: spread(values) for name, values in rates.items()}
    table = Table(title="d. achieved float32 GFLOP/s against the best measured torch.mm rate (median (IQR))")
    for column in ("workload", "GFLOP/s", "% of mm (per round)"):
        table.add_column(column, justify="right" if column != "workload" else "left")
    for name, figure in figures.items():
        share = ratios(rates[name], peaks)
        table.add_row(name, fmt(figure, 1), fmt(spread([100 * r for r in share]), 0))
    for row in b_rows:
        if row["latent_dim"] == 16:
            for family in FAMILY_NAMES:
                rate = row[family]["flops"] / row[family]["seconds"]["median"] / 1e9
                table.add_row(f"training step {family} d=16 (b's FLOPs, b's median)", f"{rate:.1f}",
                              f"{100 * rate / spread(peaks)['median']:.0f}")
    console.print(table)
    return {"gflops": figures, "peak_gflops": spread(peaks), "iwae_fraction_of_peak": fraction,
            "verdict": verdict(fraction, TARGETS["d"])}


# ---- e. small batches: burda2016 shapes against their FLOP time ------------------------------------
def section_e(args, device):
    """ms per step at batch 20, 784-200-200-50 tanh, diag, dynamic binarization: Run.train_epoch over a
    slice of the training set (the whole loop: batching, binarization, checks, progress bar) and
    train_step alone over the same number of pre-drawn batches, interleaved with a square torch.mm whose
    rate gives the FLOP time of a step in the same round."""
    images = 1000 if args.quick else 2000
    overrides = ["experiment=burda2016", f"data.root={args.data_root}", f"data.train_size={images}",
                 f"device={device.type}"]
    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as folder, SignalGuard() as guard:
        run = Run(cfg, Path(folder))
        steps = run.train_data.steps_per_epoch(BURDA_BATCH)
        progress, task = live_progress()
        alone = build_model(cfg).to(device)
        optimizer = make_optimizer(alone, 1e-3)
        noise = Noise(cfg.seed, device)
        generator = torch.Generator(device).manual_seed(0)
        batches = [torch.bernoulli(b, generator=generator) for b in run.train_data.pixels.split(BURDA_BATCH)]

        def steps_alone():
            for batch in batches:
                train_step(alone, optimizer, batch, 1.0, math.inf, noise)

        square_name, (square, square_flops) = square_matmul(args, device)
        times = interleaved_times({"epoch": lambda: run.train_epoch(progress, task, guard), "train_step": steps_alone,
                                   "mm": square}, device, args.short_repeats)
        progress.stop()
    flops = step_flops(alone, BURDA_BATCH)
    flop_seconds = [flops / (square_flops / t) for t in times["mm"]]  # a step's FLOPs at this round's mm rate
    result = {"flops_per_step": flops, "steps": steps, "mm": square_name,
              "flop_ms": spread([1e3 * s for s in flop_seconds])}
    for name, count in (("epoch", steps), ("train_step", len(batches))):
        per_step = [t / count for t in times[name]]
        result[name] = {"ms_per_step": spread([1e3 * s for s in per_step]),
                        "over_flop_time": spread(ratios(per_step, flop_seconds))}
        result[name]["verdict"] = verdict(result[name]["over_flop_time"], TARGETS["e"])
    table = Table(title=f"e. batch {BURDA_BATCH}, burda2016 shapes (784-200-200-50 tanh, diag, dynamic binarization), "
                        f"{steps} steps per timing; FLOP time = {flops / 1e6:.1f} MFLOP at the {square_name} rate of the "
                        "same round; median (IQR)")
    for column in ("what", "ms / step", "× FLOP time", ""):
        table.add_column(column, justify="right" if column != "what" else "left")
    table.add_row("epoch loop (Run.train_epoch)", fmt(result["epoch"]["ms_per_step"], 2),
                  fmt(result["epoch"]["over_flop_time"], 2), result["epoch"]["verdict"])
    table.add_row("train_step alone", fmt(result["train_step"]["ms_per_step"], 2),
                  fmt(result["train_step"]["over_flop_time"], 2), result["train_step"]["verdict"])
    table.add_row("FLOP time at the mm rate", fmt(result["flop_ms"], 3), "1", "")
    console.print(table)
    return result


# ---- targets --------------------------------------------------------------------------------------
def targets(results):
    rows = []

    def wanted(letter):
        op, value = TARGETS[letter]
        return f"{op.replace('<=', '≤').replace('>=', '≥')} {value}"

    if "a" in results:
        ratio = results["a"]["ratio"]
        rows.append(("a. epoch time ours / PyTorch-examples baseline", wanted("a"), ratio, "", verdict(ratio, TARGETS["a"])))
    if "b" in results:
        cells = [(row[f]["excess"], f, row["latent_dim"], row[f]["verdict"]) for row in results["b"] for f in FAMILY_NAMES[1:]]
        for family in FAMILY_NAMES[1:]:
            mine = [cell for cell in cells if cell[1] == family]
            worst = max(mine, key=lambda cell: cell[0]["median"])
            rows.append((f"b. worst (time ratio / FLOP ratio) over diag, {family}", wanted("b"), worst[0],
                         f"d={worst[2]} (of {len(mine)} sizes)", worst_verdict([cell[3] for cell in mine])))
    if "c" in results:
        cells = [(row[f]["speedup"], f, row["latent_dim"], row[f]["verdict"]) for row in results["c"] for f in FAMILY_NAMES]
        worst = min(cells, key=lambda cell: cell[0]["median"])
        rows.append(("c. slowest speedup over torch.distributions", wanted("c"), worst[0], f"{worst[1]} d={worst[2]}",
                     worst_verdict([cell[3] for cell in cells])))
    if "d" in results:
        rows.append(("d. IWAE GFLOP/s / best torch.mm GFLOP/s", wanted("d"), results["d"]["iwae_fraction_of_peak"], "",
                     results["d"]["verdict"]))
    if "e" in results:
        for name, label in (("epoch", "epoch loop"), ("train_step", "train_step alone")):
            figure = results["e"][name]
            rows.append((f"e. batch-20 step, {label}, × FLOP time", wanted("e"), figure["over_flop_time"],
                         f"{figure['ms_per_step']['median']:.2f} ms/step", figure["verdict"]))
    table = Table(title="targets (median (interquartile range) of per-round figures; UNCLEAR: the range straddles the "
                        "target, too noisy to judge)")
    for column in ("target", "wanted", "measured", "min–max", "where", "result"):
        table.add_column(column, justify="left" if column in ("target", "where") else "right")
    colour = {"PASS": "green", "FAIL": "red", "UNCLEAR": "yellow"}
    for name, want, figure, where, result in rows:
        table.add_row(name, want, fmt(figure), f"{figure['min']:.3f}–{figure['max']:.3f}", where,
                      f"[{colour[result]}]{result}[/{colour[result]}]")
    console.print(table)
    return [{"target": name, "wanted": want, "measured": figure, "where": where, "result": result}
            for name, want, figure, where, result in rows]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="folder with the four MNIST idx files (default: found as "
                                            "vae-compare finds them: $VAE_COMPARE_DATA, then a download)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a pass in about a minute")
    parser.add_argument("--repeats", type=int, help="interleaved rounds per long figure (a, d; default 7, --quick 3); "
                                                    "short figures (b, c, e) take 3x as many")
    parser.add_argument("--only", default="abcde", help="sections to run, e.g. --only e or --only a,e (default: all)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, as training uses)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.short_repeats = 3 * args.repeats
    args.block_seconds = 0.03 if args.quick else 0.1  # length of one timing of a short call, in b and c
    args.only = set(args.only.replace(",", ""))
    if not args.only <= set("abcde"):
        parser.error(f"--only takes letters of a, b, c, d, e; got {''.join(sorted(args.only))}")
    return args


def main():
    args = parse_args()
    flush_denormals()  # as the vae-compare command does, before OpenMP's threads start (applies to both sides of a)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
        args.data_root = data.locate("mnist", args.data_root)
        pixels = data.read_images(args.data_root, "test").to(device)
    except UserError as error:
        sys.exit(f"bench: {error}")
    header = machine_lines(device) + [f"repeats {args.repeats} (short figures {args.short_repeats})"
                                      + (", --quick" if args.quick else ""),
                                      "load average before: " + " ".join(load_average())]
    for line in header:
        console.print(line)
    results = {"machine": header}
    sections = {"a": lambda: section_a(args, device), "b": lambda: section_b(args, device, pixels),
                "c": lambda: section_c(args, device), "d": lambda: section_d(args, device, pixels, results.get("b", [])),
                "e": lambda: section_e(args, device)}
    for letter, section in sections.items():
        if letter in args.only:
            results[letter] = section()
    results["targets"] = targets(results)
    results["load_average_after"] = load_average()
    console.print("load average after: " + " ".join(results["load_average_after"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        console.print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
