"""c. Closed-form KL + rsample (forward and backward) of each family against torch.distributions."""

import torch
from rich.table import Table
from torch import distributions as D

from benchmark.timing import console, fmt, per_call_times, ratios, spread, verdict, wanted, worst_verdict
from benchmark.workloads import BATCH, FAMILY_NAMES, LATENT_DIMS, RANK
from vae_compare.posteriors import FAMILIES

# torch.distributions time / ours, at every family and latent_dim
TARGET = (">", 1.0)


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


def measure(args, device):
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
                           "speedup": speedup, "verdict": verdict(speedup, TARGET)}
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


def target_rows(rows):
    """The summary's row (target, wanted, figure, where, verdict): the slowest speedup over every cell."""
    cells = [(row[f]["speedup"], f, row["latent_dim"], row[f]["verdict"]) for row in rows for f in FAMILY_NAMES]
    worst = min(cells, key=lambda cell: cell[0]["median"])
    return [("c. slowest speedup over torch.distributions", wanted(TARGET), worst[0], f"{worst[1]} d={worst[2]}",
             worst_verdict([cell[3] for cell in cells]))]
