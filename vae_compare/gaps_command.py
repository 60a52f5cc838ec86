"""`vae-compare gaps FOLDER [overrides]`: the inference gaps of every finished run at or below FOLDER, one run
at a time (gaps.run_gaps), with progress bars and a table of each run's gaps and rotation diagnostic."""

from omegaconf import OmegaConf
from rich.table import Table

from vae_compare import export
from vae_compare.config import command_settings
from vae_compare.gaps import GapsConfig, run_gaps
from vae_compare.measure_runs import measure_runs_below
from vae_compare.rotation import ROTATION_COLUMNS


def gaps_main(folder, overrides, console):
    """The gaps of every finished run at or below FOLDER (a run, a sweep or an outputs folder). A run whose
    gaps.json has the same settings is skipped, so a rerun finishes the rest."""
    settings, run_overrides = command_settings(overrides, GapsConfig, "gaps", "gaps")

    def show(result):
        for table in gaps_tables(result):
            console.print(table)

    return measure_runs_below(folder, export.GAPS_JSON, OmegaConf.to_container(settings, enum_to_str=True),
                              lambda run, progress: run_gaps(run, settings, run_overrides, progress), show, console)


def gaps_tables(result):
    """The rich tables of one run's gaps.json: the gaps per q*, and the rotation diagnostic per q."""

    def plus_minus(row, name):
        return f"{row[name]:.2f} ± {row[name + '_stderr']:.2f}"

    run, first = result["run"], result["rows"][0]
    log_px = result["log_px"]
    gaps_table = Table(title=f"{run['label']}, latent_dim {run['latent_dim']}, seed {run['seed']}: inference gaps on "
                             f"{first['images']} test images, nats, mean ± standard error. log p(x) "
                             f"{plus_minus(first, 'log_px')} (IWAE k={log_px['samples']}, {log_px['proposal']}'s q* "
                             f"as proposal); ELBO of the encoder's q(z|x) {plus_minus(first, 'encoder_elbo')}",
                       caption="approximation = log p(x) − ELBO(q*), amortization = ELBO(q*) − ELBO(q(z|x)); "
                               "start: the encoder's q, or the diagonal Gaussian closest to it; continuation: "
                               "what the check's last round of more steps still added")
    for column in ("q*", "start", "ELBO of q*", "approximation", "amortization", "continuation", "steps", "s"):
        gaps_table.add_column(column, justify="left" if column in ("q*", "start") else "right")
    for row in result["rows"]:
        gaps_table.add_row(row["family"], row["start"],
                           plus_minus(row, "optimized_elbo"), plus_minus(row, "approximation_gap"),
                           plus_minus(row, "amortization_gap"), plus_minus(row, "continuation_gain"),
                           f"{row['steps_mean']:.0f}", f"{row['seconds']:.0f}")
    rotation_table = Table(title="Correlation one global rotation R removes (nats per image, mean)",
                           caption="total correlation: KL(q ‖ product of its marginals), the forward direction (the "
                                   "log-det gap); reverse KL: min over diagonal q' of KL(q' ‖ q). R: eigenvectors of "
                                   "E_x[Σ(x)], or the joint diagonalisation (Pham's criterion over rotations).")
    for column in ("q", "total corr.", "R: E[Σ]", "R: joint", "reverse KL", "R: E[Σ]", "R: joint"):
        rotation_table.add_column(column, justify="left" if column == "q" else "right")
    for q, numbers in result["rotation"].items():
        rotation_table.add_row("q(z|x)" if q == "encoder" else f"q*:{q}", *(f"{numbers[c]:.3f}" for c in ROTATION_COLUMNS))
    return gaps_table, rotation_table
