"""The report's plots: one table (PLOTS) names every PNG, its title and how it is drawn."""

import io
import math

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vae_compare import export
from vae_compare.report.collect import series

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
        dims = sorted({row["latent_dim"] for row in rows})
        if dims[-1] >= 4 * dims[0]:  # latent sizes are usually powers of two
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        ax.set_xticks(dims, [str(d) for d in dims])
        if log_y:
            ax.set_yscale("log")
        ax.set(title=dataset, xlabel="latent_dim", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_png(fig, path)


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



def vs_latent_dim(metric, ylabel, log_y=False):
    return lambda runs, groups, colours, path: plot_vs_latent_dim(groups, metric, ylabel, colours, path, log_y)


# (file name, title, how to draw it): report.md links these in this order.
PLOTS = [
    ("log_px_vs_latent_dim.png", "test log p(x), IWAE",
     vs_latent_dim("log_px", "test log p(x), IWAE (nats, higher is better)")),
    ("logdet_gap_vs_latent_dim.png", "log-det gap", vs_latent_dim("logdet_gap", "log-det gap (nats)")),
    ("head_outputs_vs_latent_dim.png", "encoder head outputs",
     vs_latent_dim("head_outputs", "encoder head outputs", log_y=True)),
    ("seconds_per_epoch_vs_latent_dim.png", "seconds per epoch", vs_latent_dim("seconds_per_epoch", "seconds per epoch")),
    ("val_elbo_curves.png", "validation ELBO per epoch",
     lambda runs, groups, colours, path: plot_validation_curves(runs, colours, path)),
]


def write_plots(runs, groups, out):
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(series(row) for row in groups))}
    for name, _, draw in PLOTS:
        draw(runs, groups, colours, out / name)
