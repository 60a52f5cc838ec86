"""The end of a run: evaluate the best weights on the test set and write the run's final files.

One pipeline serves both the end of training and `vae-compare evaluate RUN_FOLDER` (reevaluate), which
re-evaluates a finished run (e.g. with more importance samples) without retraining and reads only the test split.
"""

from pathlib import Path

import torch
from rich.progress import Progress
from rich.table import Table

from vae_compare import UserError, data, evaluate, export, pictures, rundir
from vae_compare.config import hparams_of, plain, run_config
from vae_compare.export import FINAL_FILE
from vae_compare.labels import run_label
from vae_compare.model import build_model
from vae_compare.progress import ProgressBars
from vae_compare.proposal import qstar_log_px
from vae_compare.runtime import pick_device

# Final numbers shown in TensorBoard's HPARAMS tab: summary key -> column title there.
HPARAM_METRICS = {"log_px": "test log p(x)", "elbo": "test ELBO", "kl": "test KL", "active_units": "active units",
                  "active_directions": "active directions", "logdet_gap": "log-det gap"}
# The tag group of those single-point scalars: after train/ and val/ in TensorBoard's order (export.TensorBoard).
TEST_GROUP = "x_test"
# Pictures of q(z|x) on the first test images: the means of POSTERIOR_MEANS images (dots), the covariances
# of POSTERIOR_COVARIANCES (ellipses; a few hundred kB at d = 64), the correlation heat maps of CORRELATION_IMAGES.
POSTERIOR_MEANS, POSTERIOR_COVARIANCES, CORRELATION_IMAGES = 2000, 50, 4


def evaluate_and_write(folder: Path, cfg, model, device, training: dict, data_folder=None) -> dict:
    """Evaluate `model` (the best weights) on the test split; write final.csv, the posterior pictures and
    their arrays, TensorBoard's test numbers (hparams), summary table and pictures, then summary.json last.
    `training` holds what summary.json records about training. With eval.on_test=false (tuning) the test set
    is not read: the summary holds no test numbers and no pictures are drawn."""
    model.eval()
    if cfg.eval.on_test:
        test_folder, test = data.load_test(cfg.data, device)
        with Progress(transient=False) as bars:
            estimate = qstar_log_px if cfg.eval.log_px_proposal == "qstar" else None
            final = evaluate.final_metrics(model, test, cfg.eval, progress=ProgressBars(bars), seed=cfg.seed,
                                           log_px_estimate=estimate)
    else:
        test_folder, final = data_folder, {}
    summary = {
        "status": "complete",
        "config": plain(cfg),
        "device": str(device),
        "torch": torch.__version__,
        "data_folder": str(data_folder or test_folder),
        "params": export.params_row(cfg, model),
        **training,
        # train.decoder_from: the decoder is another run's, frozen; only the encoder was trained
        "decoder": "trained" if cfg.train.decoder_from is None else f"frozen from {cfg.train.decoder_from}",
        # a Bernoulli likelihood of grey levels is not a normalised likelihood: say so wherever it is read
        "likelihood": "bernoulli-grey-levels (not normalised)" if cfg.data.binarize == "none" else "bernoulli",
        "test": final,
    }
    row = {**hparams_of(cfg), **{f"test_{k}": v for k, v in final.items()},
           "best_epoch": summary["best_epoch"], "seconds_per_epoch": summary["seconds_per_epoch"],
           **{k: v for k, v in summary["params"].items() if k not in ("family", "latent_dim", "rank")}}
    export.write_csv(folder / FINAL_FILE, [row])
    pngs = {}
    if final:
        sample = posterior_sample(model, test, data.read_labels(test_folder, "test"), data.label_name(test_folder))
        export.atomic_torch_save(folder / export.POSTERIOR_SAMPLE, sample)
        figures = posterior_figures(sample, test.pixels[:CORRELATION_IMAGES], run_label(cfg))
        pngs = {name: pictures.figure_png(fig) for name, fig in figures.items()}
        for name, png in pngs.items():
            export.atomic_write(folder / name, png)
    step = summary["best_epoch"]
    tensorboard = export.TensorBoard(folder)
    try:
        # the final numbers as single points only where they serve: the HPARAMS tab's columns
        metrics = {f"{TEST_GROUP}/best_val_elbo": ("best validation ELBO", summary["best_val_elbo"])}
        metrics.update({f"{TEST_GROUP}/{k}": (title, final[k]) for k, title in HPARAM_METRICS.items() if k in final})
        tensorboard.hparams(hparams_of(cfg), metrics, step)
        tensorboard.text(f"{TEST_GROUP}/summary", summary_markdown(summary), step)
        for name, png in pngs.items():
            tensorboard.figure("viz/" + Path(name).stem, pictures.png_array(png), step)
    finally:
        tensorboard.close()
    rundir.write_summary(folder, summary)
    return summary


@torch.no_grad()
def posterior_sample(model, split, labels, label_name):
    """What the pictures of q(z|x) are drawn from, small enough to keep with the run (the report draws every
    family's panel from these files without loading a model): the posterior means of the first
    POSTERIOR_MEANS test images, the covariances of the first POSTERIOR_COVARIANCES, their labels and what those are."""
    images = split.pixels[:POSTERIOR_MEANS]
    return {
        "means": model.posterior(images).mean.float().cpu(),
        "covariances": model.posterior(images[:POSTERIOR_COVARIANCES]).covariance().float().cpu(),
        "labels": labels[:len(images)].clone(),
        "label_name": label_name,
    }


def posterior_figures(sample, images, label):
    """{file name: figure}: the ellipses of this run's one family, and the correlation matrices of q(z|x)
    for the first test images beside those images."""
    return {
        export.ELLIPSES_PNG: pictures.sample_ellipse_figure({label: sample}),
        export.CORRELATIONS_PNG: pictures.correlation_figure(sample["covariances"], label, images=images.cpu(),
                                                             count=CORRELATION_IMAGES),
    }


def summary_rows(summary):
    """(metric, value) rows of a finished run's final table, for the console and for TensorBoard's text."""
    test = summary["test"]
    if not test:  # eval.on_test=false
        return [("best validation ELBO (test set not evaluated)", f"{summary['best_val_elbo']:.2f}")]
    return [
        ("log p(x), IWAE k=%d (nats)" % test["iwae_samples"], f"{test['log_px']:.2f} ± {test['log_px_stderr']:.2f}"),
        ("ELBO (nats)", f"{test['elbo']:.2f}"),
        ("KL (nats)", f"{test['kl']:.2f}"),
        ("reconstruction (nats)", f"{test['recon']:.2f}"),
        ("active units (coordinates, Burda et al.)", f"{test['active_units']} / {summary['config']['latent_dim']}"),
        ("active directions (rotation-invariant)", f"{test.get('active_directions', '?')} / {summary['config']['latent_dim']}"),
        ("mean |off-diagonal correlation|", f"{test['offdiag_corr']:.3f}"),
        ("log-det gap (nats)", f"{test['logdet_gap']:.3f}"),
        ("median condition number", f"{test['condition_number']:.2f}"),
        ("best validation ELBO", f"{summary['best_val_elbo']:.2f}"),
        ("head outputs / total parameters", f"{summary['params']['head_outputs']} / {summary['params']['total_params']:,}"),
        ("seconds per epoch", f"{summary['seconds_per_epoch']:.2f}"),
        ("IWAE evaluation seconds", f"{test['iwae_seconds']:.1f}"),
    ]


def summary_title(summary):
    frozen = "" if summary.get("decoder", "trained") == "trained" else f", decoder {summary['decoder']}"
    return (f"{summary['config']['family']['name']}, latent_dim {summary['config']['latent_dim']}{frozen}: "
            f"test set, best epoch {summary['best_epoch']}")


def summary_table(summary):
    grey = summary["config"]["data"]["binarize"] == "none"
    table = Table(title=summary_title(summary),
                  caption="data.binarize=none: Bernoulli log-likelihoods of grey levels, not normalised likelihoods"
                  if grey else None)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(summary):
        table.add_row(name, value)
    return table


def summary_markdown(summary):
    """The final table as markdown, for TensorBoard's TEXT tab."""
    rows = [f"| {name.replace('|', '&#124;')} | {value} |" for name, value in summary_rows(summary)]
    return "\n".join([f"**{summary_title(summary)}**", "", "| metric | value |", "|---|---:|", *rows])


def reevaluation(folder: Path, overrides):
    """(summary, config) of a finished run to re-evaluate with the overrides; refuses an unfinished run or a bad
    override before anything is written."""
    summary = rundir.read_summary(folder)
    if summary is None:
        raise UserError(f"{folder} has not finished training; continue it with: vae-compare train resume={folder}")
    return summary, run_config(folder, overrides)


def reevaluate(folder: Path, summary, cfg):
    """The new summary of a finished run, its best weights evaluated with cfg (from reevaluation), on the run's own
    train.threads (or the override's): re-evaluations run side by side do not oversubscribe the cores."""
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = build_model(cfg).to(device)
    model.load_state_dict(rundir.load_best(folder))
    training = {key: summary[key] for key in ("best_epoch", "best_val_elbo", "seconds_per_epoch", "images_per_second")}
    return evaluate_and_write(folder, cfg, model, device, training)
