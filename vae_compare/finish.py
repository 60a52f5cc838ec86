"""The end of a run: evaluate the best weights on the test set and write the run's final files.

One pipeline serves both the end of training and `vae-compare evaluate RUN_FOLDER`, which re-evaluates a
finished run (e.g. with more importance samples) without retraining and reads only the test split.
"""

from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from vae_compare import UserError, data, evaluate, export, lock
from vae_compare.config import EVALUATE_KEYS, Config, hparams_of, plain, validate
from vae_compare.export import BEST, FINAL_FILE, load_torch, read_summary
from vae_compare.model import build_model

# Final numbers shown as TensorBoard hparams metrics.
HPARAM_METRICS = ("log_px", "elbo", "kl", "active_units", "active_directions", "logdet_gap")


def evaluate_and_write(folder: Path, cfg, model, device, training: dict, data_folder=None) -> dict:
    """Evaluate `model` (the best weights) on the test split; write final.csv, TensorBoard's final/ and
    hparams, then summary.json last. `training` holds what summary.json records about training. With
    eval.on_test=false (tuning) the test set is not read and the summary holds no test numbers."""
    model.eval()
    if cfg.eval.on_test:
        test_folder, test = data.load_test(cfg.data, device)
        final = evaluate.final_metrics(model, test, cfg.eval, show_progress=True, seed=cfg.seed)
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
        # a Bernoulli likelihood of grey levels is not a normalised likelihood: say so wherever it is read
        "likelihood": "bernoulli-grey-levels (not normalised)" if cfg.data.binarize == "none" else "bernoulli",
        "test": final,
    }
    row = {**hparams_of(cfg), **{f"test_{k}": v for k, v in final.items()},
           "best_epoch": summary["best_epoch"], "seconds_per_epoch": summary["seconds_per_epoch"],
           **{k: v for k, v in summary["params"].items() if k not in ("family", "latent_dim", "rank")}}
    export.write_csv(folder / FINAL_FILE, [row])
    tensorboard = export.TensorBoard(folder)
    try:
        tensorboard.scalars(final, summary["best_epoch"], "final")
        metrics = {"hparams/best_val_elbo": summary["best_val_elbo"]}
        metrics.update({f"hparams/test_{k}": final[k] for k in HPARAM_METRICS if k in final})
        tensorboard.hparams(hparams_of(cfg), metrics)
    finally:
        tensorboard.close()
    export.write_json(folder / export.SUMMARY_FILE, summary)
    return summary


def summary_table(summary):
    grey = summary["config"]["data"]["binarize"] == "none"
    table = Table(title=f"{summary['config']['family']['name']}, latent_dim {summary['config']['latent_dim']}: "
                        f"test set, best epoch {summary['best_epoch']}",
                  caption="data.binarize=none: Bernoulli log-likelihoods of grey levels, not normalised likelihoods"
                  if grey else None)
    table.add_column("metric")
    table.add_column("value", justify="right")
    test = summary["test"]
    if not test:  # eval.on_test=false
        table.add_row("best validation ELBO (test set not evaluated)", f"{summary['best_val_elbo']:.2f}")
        return table
    rows = [
        ("log p(x), IWAE k=%d (nats)" % test["iwae_samples"], f"{test['log_px']:.2f} ± {test['log_px_stderr']:.2f}"),
        ("ELBO (nats)", f"{test['elbo']:.2f}"),
        ("KL (nats)", f"{test['kl']:.2f}"),
        ("reconstruction (nats)", f"{test['recon']:.2f}"),
        ("active units (coordinates, Burda et al.)", f"{test['active_units']} / {summary['config']['latent_dim']}"),
        ("active directions (rotation-invariant)", f"{test['active_directions']} / {summary['config']['latent_dim']}"),
        ("mean |off-diagonal correlation|", f"{test['offdiag_corr']:.3f}"),
        ("log-det gap (nats)", f"{test['logdet_gap']:.3f}"),
        ("median condition number", f"{test['condition_number']:.2f}"),
        ("best validation ELBO", f"{summary['best_val_elbo']:.2f}"),
        ("head outputs / total parameters", f"{summary['params']['head_outputs']} / {summary['params']['total_params']:,}"),
        ("seconds per epoch", f"{summary['seconds_per_epoch']:.2f}"),
        ("IWAE evaluation seconds", f"{test['iwae_seconds']:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def run_config(folder: Path, overrides):
    """A finished run's own config with evaluation overrides applied, checked against the schema."""
    for override in overrides:
        name = override.split("=", 1)[0]
        if "=" not in override or name not in EVALUATE_KEYS:
            raise UserError(f"evaluate takes only {', '.join(sorted(EVALUATE_KEYS))} overrides, got {override!r}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(folder / ".hydra" / "config.yaml"),
                              OmegaConf.from_dotlist(list(overrides)))
    except Exception as error:  # OmegaConf raises several types for bad values
        raise UserError(f"bad override: {str(error).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def evaluate_run(folder: Path, overrides, console: Console):
    """`vae-compare evaluate`: re-evaluate a finished run's best weights without retraining."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / ".hydra" / "config.yaml").exists() or not (folder / BEST).exists():
        raise UserError(f"{folder} is not a trained vae-compare run folder (needs .hydra/config.yaml and {BEST})")
    with lock.hold(folder):  # it rewrites the run's final files: not while another process trains it
        summary = reevaluate(folder, overrides)
    console.print(summary_table(summary))
    return summary


def reevaluate(folder: Path, overrides):
    """The new summary of a finished run, its best weights evaluated with the overrides."""
    from vae_compare.train import pick_device

    summary = read_summary(folder)
    if summary is None:
        raise UserError(f"{folder} has not finished training; continue it with: vae-compare train resume={folder}")
    cfg = run_config(folder, overrides)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = build_model(cfg).to(device)
    model.load_state_dict(load_torch(folder / BEST))
    training = {key: summary[key] for key in ("best_epoch", "best_val_elbo", "seconds_per_epoch", "images_per_second")}
    return evaluate_and_write(folder, cfg, model, device, training)
