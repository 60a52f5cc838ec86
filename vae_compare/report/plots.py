"""The report's plots: one table (PLOTS) names every PNG, its title and how it is drawn; the posterior
pictures, one per dataset x latent_dim, are entries of the same form made from the runs (posterior_plots)."""

import io
import math

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vae_compare import export, pictures
from vae_compare.report.collect import series
from vae_compare.report.inference import confidence
from vae_compare.report.stats import METRIC_NAMES, PAIRED

def save_png(fig, path):
    """Render in memory, then write atomically (temporary name in the same folder, then rename)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    export.atomic_write(path, buffer.getvalue())


def plot_vs_latent_dim(groups, metric, ylabel, colours, path, log_y=False):
    """One panel per dataset, one line per variant: mean over seeds with ±1 sd error bars."""
    datasets = sorted({row["dataset"] for row in groups})
    fig = Figure(figsize=(5.5 * len(datasets), 4), layout="constrained")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        rows = [row for row in groups if row["dataset"] == dataset]
        for name in dict.fromkeys(series(row) for row in rows):
            points = sorted((row["latent_dim"], row[f"{metric}_mean"], row[f"{metric}_std"] or 0.0)
                            for row in rows if series(row) == name)
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colours[name], label=name)
        latent_dim_axis(ax, sorted({row["latent_dim"] for row in rows}))
        if log_y:
            ax.set_yscale("log")
        ax.set(title=dataset, xlabel="latent_dim", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_png(fig, path)


def log_latent_dims(dims):
    return dims[-1] >= 4 * dims[0]  # latent sizes are usually powers of two


def latent_dim_axis(ax, dims):
    """The x axis of a plot against latent_dim: a tick per size, base-2 log scale when they span a factor 4."""
    if log_latent_dims(dims):
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(dims, [str(d) for d in dims])


def dodge(latent_dim, index, count, dims):
    """x of the index-th of count series at latent_dim: side by side, so that intervals at one size do not
    hide each other (a fixed share of the distance between sizes, in the axis's own scale)."""
    shift = 0.08 * (index - (count - 1) / 2)
    if log_latent_dims(dims):
        return latent_dim * 2 ** shift
    step = min((b - a for a, b in zip(dims, dims[1:])), default=1)
    return latent_dim + shift * step


def gain_figure(groups, colours):
    """The question's answer per dataset: each variant's gain in the compared metric over diag against
    latent_dim, with the interval the report's table gives it (gain_low, gain_high); a gain without an
    interval (one paired seed, or no residual degrees of freedom) is drawn as a point without a bar."""
    datasets = sorted({row["dataset"] for row in groups})
    metric = groups[0]["metric"]
    fig = Figure(figsize=(5.5 * len(datasets), 4), layout="constrained")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        dims = sorted({row["latent_dim"] for row in groups if row["dataset"] == dataset})
        rows = [row for row in groups if row["dataset"] == dataset and row["gain"] is not None]
        ax.axhline(0.0, color="0.25", linewidth=1, zorder=0)  # diag itself
        names = list(dict.fromkeys(series(row) for row in rows))
        for index, name in enumerate(names):
            points = sorted((row for row in rows if series(row) == name), key=lambda row: row["latent_dim"])
            x = [dodge(row["latent_dim"], index, len(names), dims) for row in points]
            ax.plot(x, [row["gain"] for row in points], marker="o", color=colours[name], label=name)
            bars = [(xi, row) for xi, row in zip(x, points) if row["gain_low"] is not None]
            if bars:
                ax.errorbar([xi for xi, _ in bars], [row["gain"] for _, row in bars],
                            yerr=[[row["gain"] - row["gain_low"] for _, row in bars],
                                  [row["gain_high"] - row["gain"] for _, row in bars]],
                            fmt="none", ecolor=colours[name], capsize=3)
        latent_dim_axis(ax, dims)
        analysis = "paired by seed" if rows and rows[0]["analysis"] == PAIRED else "two-way model"
        level = confidence(rows[0]["alpha"]) if rows else ""
        ax.set(title=f"{dataset}, {analysis}; bars: simultaneous {level} interval (report table), none without one",
               xlabel="latent_dim", ylabel=f"gain in {METRIC_NAMES.get(metric, metric)} over diag (nats)")
        ax.title.set_fontsize("small")
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no variant shares a seed with diag", transform=ax.transAxes, ha="center")
    return fig


def validation_curve(folder):
    """(epochs, val_elbo) from a run's metrics.csv; empty when the file is missing or unreadable."""
    try:
        rows = export.read_csv(folder / export.METRICS_FILE)
    except OSError:
        return [], []
    points = []
    for row in rows:
        try:
            points.append((int(row["epoch"]), float(row["val_elbo"])))
        except (KeyError, TypeError, ValueError):
            continue
    return [p[0] for p in points], [p[1] for p in points]


def plot_validation_curves(runs, colours, path):
    """One panel per dataset x latent_dim, one colour per variant, one line per run."""
    panels = sorted({(run["dataset"], run["latent_dim"]) for run in runs})
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.6 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (dataset, latent_dim) in zip(axes, panels):
        labelled = set()
        for run in sorted((r for r in runs if (r["dataset"], r["latent_dim"]) == (dataset, latent_dim)), key=series):
            epochs, elbos = validation_curve(run["folder"])
            if not epochs:
                continue
            name = series(run)
            ax.plot(epochs, elbos, marker=".", alpha=0.8, color=colours[name],
                    label=None if name in labelled else name)
            labelled.add(name)
        ax.set(title=f"{dataset}, latent_dim {latent_dim}", xlabel="epoch", ylabel="validation ELBO (nats)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize="small")
    for ax in axes[len(panels):]:  # grid cells left over when the panels do not fill the last row
        ax.set_visible(False)
    save_png(fig, path)



def load_sample(folder):
    """A run's posterior_sample.pt (finish.posterior_sample), or None when it is missing or unreadable
    (runs from before the file existed)."""
    try:
        return torch.load(folder / export.POSTERIOR_SAMPLE, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign: torch raises several types
        return None


def posterior_plots(runs):
    """(file name, title, how to draw it) for the posterior pictures: per dataset x latent_dim, one figure
    with one panel per variant, drawn from the first seed's saved sample (runs come sorted by seed), so no
    model is loaded. Cells where no run has a sample get no figure."""
    samples = {}
    for run in runs:
        cell = samples.setdefault((run["dataset"], run["latent_dim"]), {})
        if series(run) not in cell:
            sample = load_sample(run["folder"])
            if sample is not None:
                cell[series(run)] = sample
    one_dataset = len({run["dataset"] for run in runs}) == 1
    entries = []
    for (dataset, latent_dim), cell in samples.items():
        if cell:
            name = f"posterior_ellipses{'' if one_dataset else '_' + dataset}_d{latent_dim}.png"
            entries.append((name, f"q(z|x), {dataset}, latent_dim {latent_dim}", draw_samples(cell)))
    return entries


def draw_samples(cell):
    return lambda runs, groups, colours, path: save_png(pictures.sample_ellipse_figure(cell), path)


def posterior_markdown(entries):
    """report.md's section for the posterior pictures (posterior_plots' entries)."""
    if not entries:
        return ""
    lines = ["", "## The posterior q(z|x)", "",
             "One panel per variant (its first seed's run): the posterior means of the first test images (dots, "
             "coloured by digit) and the 1-sd ellipses of q(z|x) for the first of them, in the latent plane (d = 2) "
             "or in each model's own principal plane of the means (d > 2). In the latent plane diag's ellipses "
             "are axis-aligned; a full covariance can tilt them.", ""]
    for name, title, _ in entries:
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


def vs_latent_dim(metric, ylabel, log_y=False):
    return lambda runs, groups, colours, path: plot_vs_latent_dim(groups, metric, ylabel, colours, path, log_y)


# (file name, title, how to draw it): report.md links these in this order.
PLOTS = [
    ("log_px_gain_vs_latent_dim.png", "gain in test log p(x) over diag",
     lambda runs, groups, colours, path: save_png(gain_figure(groups, colours), path)),
    ("log_px_vs_latent_dim.png", "test log p(x), IWAE",
     vs_latent_dim("log_px", "test log p(x), IWAE (nats, higher is better)")),
    ("logdet_gap_vs_latent_dim.png", "log-det gap", vs_latent_dim("logdet_gap", "log-det gap (nats)")),
    ("head_outputs_vs_latent_dim.png", "encoder head outputs",
     vs_latent_dim("head_outputs", "encoder head outputs", log_y=True)),
    ("seconds_per_epoch_vs_latent_dim.png", "seconds per epoch", vs_latent_dim("seconds_per_epoch", "seconds per epoch")),
    ("val_elbo_curves.png", "validation ELBO per epoch",
     lambda runs, groups, colours, path: plot_validation_curves(runs, colours, path)),
]


def plot_colours(groups):
    """One colour per series (variant and settings), the same in every plot."""
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(series(row) for row in groups))}


def write_plots(runs, groups, out):
    """Draw PLOTS and the posterior pictures into out; returns the posterior entries (report.md links
    PLOTS itself, and these with posterior_markdown)."""
    colours = plot_colours(groups)
    posterior = posterior_plots(runs)
    for name, _, draw in PLOTS + posterior:
        draw(runs, groups, colours, out / name)
    return posterior
