"""The report's inference gaps, from each run's gaps.json (`vae-compare gaps`): gaps.csv, a table per latent size,
the rotation diagnostic, and a plot of approximation against amortization gap per family."""

import statistics
from collections import defaultdict

from matplotlib.figure import Figure

from vae_compare.report.collect import family_order, series
from vae_compare.report.plots import save_png
from vae_compare.report.render import markdown_table
from vae_compare.rundir import read_gaps

GAP_METRICS = ("log_px", "encoder_elbo", "optimized_elbo", "approximation_gap", "amortization_gap", "inference_gap")
ROTATION_METRICS = ("total_correlation", "total_correlation_rotated_mean_cov", "total_correlation_rotated_joint",
                    "diag_reverse_kl", "diag_reverse_kl_rotated_joint")
PLOT_NAME = "gaps_approximation_vs_amortization.png"
MARKERS = "osD^vP*X"


def mean_sd(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def gap_groups(runs):
    """One row per dataset x latent_dim x settings x variant x q* family, over the seeds whose run has gaps.json:
    each gap's mean and sd over seeds, and (on the row of the run's own family) the rotation diagnostic of the
    encoder's q(z|x)."""
    members = defaultdict(list)
    for run in runs:
        result = read_gaps(run["folder"])
        for row in (result or {}).get("rows", []):
            members[(run["dataset"], run["latent_dim"], run["setting"], run["variant"], row["family"])].append(
                (run, row, result))

    def order(key):
        run = members[key][0][0]
        return key[:3], family_order(run["family"]), key[3], key[4] != run["family"], family_order(key[4])

    groups = []
    for key in sorted(members, key=order):
        run = members[key][0][0]
        entries = members[key]
        group = {"dataset": key[0], "latent_dim": key[1], "setting": key[2], "variant": key[3], "family": run["family"],
                 "q_star": key[4], "own": key[4] == run["family"], "n": len(entries),
                 "images": entries[0][1]["images"], "iwae_samples": entries[0][2]["log_px"]["samples"],
                 "steps_mean": statistics.fmean(row["steps_mean"] for _, row, _ in entries)}
        for name in GAP_METRICS:
            group[f"{name}_mean"], group[f"{name}_sd"] = mean_sd([row[name] for _, row, _ in entries])
        for name in ROTATION_METRICS:
            group[f"encoder_{name}_mean"], _ = mean_sd([result["rotation"]["encoder"][name] for _, _, result in entries])
        groups.append(group)
    return groups


def plus_minus(group, name):
    mean, sd = group[f"{name}_mean"], group[f"{name}_sd"]
    return f"{mean:.2f}" + ("" if sd is None else f" ± {sd:.2f}")


def gaps_markdown(groups):
    """report.md's section on the inference gaps; empty when no run has gaps.json."""
    if not groups:
        return ""
    lines = ["", "## Inference gaps", "",
             f"From `vae-compare gaps` on the first {groups[0]['images']} test images of each run (Cremer, Li and "
             "Duvenaud 2018), decoder frozen: q* is the best member of a family for each image alone, found by Adam "
             "from the encoder's output. Approximation gap = log p(x) − ELBO(q*): what the family costs. Amortization "
             "gap = ELBO(q*) − ELBO(q(z|x)): what one shared encoder costs against fitting each image. log p(x) is "
             f"IWAE with k = {groups[0]['iwae_samples']} and the best q* as proposal. Rows with another family's q* "
             "ask the run's decoder how much that family would gain. Nats per image, mean ± sd over seeds.", ""]
    header = ["variant", "q*", "n", "log p(x)", "approximation gap", "amortization gap", "inference gap", "steps"]
    for cell in dict.fromkeys((g["dataset"], g["latent_dim"], g["setting"]) for g in groups):
        rows = [g for g in groups if (g["dataset"], g["latent_dim"], g["setting"]) == cell]
        lines += [f"### {cell[0]}, latent_dim {cell[1]}" + (f", {cell[2]}" if cell[2] else ""), "",
                  markdown_table(header, [[g["variant"], g["q_star"] + (" (own)" if g["own"] else ""), str(g["n"]),
                                           plus_minus(g, "log_px"), plus_minus(g, "approximation_gap"),
                                           plus_minus(g, "amortization_gap"), plus_minus(g, "inference_gap"),
                                           f"{g['steps_mean']:.0f}"] for g in rows]), ""]
    own = [g for g in groups if g["own"]]
    lines += ["### The rotation argument", "",
              "How much correlation in the encoder's q(z|x) one global rotation R removes (a rotation costs a VAE "
              "nothing: the prior is rotation-invariant and the decoder can absorb it). Total correlation: "
              "KL(q ‖ product of its marginals), the forward direction (the log-det gap). Reverse KL: min over "
              "diagonal q' of KL(q' ‖ q) = ½(log det Σ + Σᵢ log (Σ⁻¹)ᵢᵢ), what a diagonal family gives up against q. "
              "R from the eigenvectors of E_x[Σ(x)], or the joint diagonalisation (Pham's criterion over rotations). "
              "Near zero after R: a diagonal q with a rotated decoder does as well; not near zero: the correlations "
              "are per input. Nats per image, mean over seeds.", "",
              markdown_table(["d", "variant", "total corr.", "after R (E[Σ])", "after R (joint)", "reverse KL",
                              "after R (joint)"],
                             [[str(g["latent_dim"]), g["variant"]] + [f"{g[f'encoder_{m}_mean']:.3f}" for m in ROTATION_METRICS]
                              for g in own]), "",
              f"![approximation against amortization gap]({PLOT_NAME})", ""]
    return "\n".join(lines)


def gaps_figure(groups, colours):
    """Approximation against amortization gap, one panel per dataset: a colour per run variant, a marker per q*
    family (filled: the run's own family), each point labelled with its latent_dim; bars ±1 sd over seeds."""
    datasets = sorted({g["dataset"] for g in groups})
    families = list(dict.fromkeys(g["q_star"] for g in sorted(groups, key=lambda g: family_order(g["q_star"]))))
    fig = Figure(figsize=(6 * len(datasets), 4.5), layout="constrained")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        for g in (g for g in groups if g["dataset"] == dataset):
            colour = colours.get(series(g), "0.3")
            ax.errorbar(g["amortization_gap_mean"], g["approximation_gap_mean"],
                        xerr=g["amortization_gap_sd"] or 0.0, yerr=g["approximation_gap_sd"] or 0.0,
                        marker=MARKERS[families.index(g["q_star"]) % len(MARKERS)], capsize=2, color=colour,
                        markerfacecolor=colour if g["own"] else "white", linestyle="none")
            ax.annotate(f"d={g['latent_dim']}", (g["amortization_gap_mean"], g["approximation_gap_mean"]),
                        fontsize="x-small", xytext=(4, 3), textcoords="offset points")
        for name, colour in colours.items():
            if any(series(g) == name for g in groups if g["dataset"] == dataset):
                ax.plot([], [], color=colour, marker="o", linestyle="none", label=f"run: {name}")
        for index, family in enumerate(families):
            ax.plot([], [], color="0.3", marker=MARKERS[index % len(MARKERS)], markerfacecolor="white",
                    linestyle="none", label=f"q*: {family}")
        ax.set(title=f"{dataset}: filled = the run's own family's q*", xlabel="amortization gap (nats)",
               ylabel="approximation gap (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


def write_gaps_plot(groups, colours, out):
    if groups:
        save_png(gaps_figure(groups, colours), out / PLOT_NAME)
