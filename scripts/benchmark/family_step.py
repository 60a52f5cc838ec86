"""b. Training-step time of cholesky and lowrank over diag per latent_dim, against the ratio of their FLOPs."""

import math

from rich.table import Table

from benchmark.timing import console, fmt, per_call_times, ratios, spread, verdict, wanted, worst_verdict
from benchmark.workloads import BATCH, FAMILY_NAMES, LATENT_DIMS, RANK, step_flops, training_model
from vae_compare.train import make_optimizer, train_step

# (time ratio over diag) / (FLOP ratio over diag), at every latent_dim
TARGET = ("<=", 1.15)


def step_function(model, batch):
    """One training step exactly as Run.train_epoch takes it (fused Adam, gradient norm, no clipping)."""
    optimizer = make_optimizer(model, 1e-3)
    return lambda: train_step(model, optimizer, batch, 1.0, math.inf)


def measure(args, device, pixels):
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
            figures["verdict"] = verdict(figures["excess"], TARGET)
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


def target_rows(rows):
    """The summary's rows (target, wanted, figure, where, verdict): the worst latent_dim of each family."""
    cells = [(row[f]["excess"], f, row["latent_dim"], row[f]["verdict"]) for row in rows for f in FAMILY_NAMES[1:]]
    summary = []
    for family in FAMILY_NAMES[1:]:
        mine = [cell for cell in cells if cell[1] == family]
        worst = max(mine, key=lambda cell: cell[0]["median"])
        summary.append((f"b. worst (time ratio / FLOP ratio) over diag, {family}", wanted(TARGET), worst[0],
                        f"d={worst[2]} (of {len(mine)} sizes)", worst_verdict([cell[3] for cell in mine])))
    return summary
