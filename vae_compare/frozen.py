"""train.decoder_from: a finished run's decoder, loaded into a new run and frozen, so that every family's
encoder is trained against the identical decoder (the positive control of docs/control.md). With
dataset=synthetic, train.decoder_from=true_decoder freezes the generating model's own decoder instead."""

from pathlib import Path

from omegaconf import OmegaConf

from vae_compare import UserError, rundir, synthetic
from vae_compare.config import flatten
from vae_compare.export import BEST
from vae_compare.model import vae_config

TRUE_DECODER = "true_decoder"  # not "true": Hydra reads that as a boolean


def frozen_decoder(cfg):
    """The decoder weights named by train.decoder_from (that finished run's best.pt, or the synthetic set's true
    decoder), or None; a folder that is not a finished run of the same data and latent size is one UserError."""
    source = cfg.train.decoder_from
    if source is None:
        return None
    if source == TRUE_DECODER:
        if cfg.data.name != synthetic.NAME:
            raise UserError(f"train.decoder_from={TRUE_DECODER}: only dataset={synthetic.NAME} has a true decoder "
                            f"(this run has dataset={cfg.data.name}); give a finished run folder instead")
        return synthetic.true_decoder_state_dict(vae_config(cfg))
    folder = Path(source).expanduser()
    summary = rundir.read_summary(folder)
    if summary is None or not (folder / BEST).is_file():
        raise UserError(f"train.decoder_from={source}: not a finished run folder (it needs summary.json with "
                        f"status complete and {BEST})")
    theirs = flatten(summary["config"])
    # read one key at a time: the CLI's composed config also holds Hydra's, which resolves only in a job
    for name in ("data.name", "data.binarize", "latent_dim"):
        ours = OmegaConf.select(cfg, name)  # a choice compares equal to its string
        if theirs[name] != ours:
            raise UserError(f"train.decoder_from={source} was trained with {name}={theirs[name]}, this run has "
                            f"{ours}")
    prefix = "decoder."
    return {name[len(prefix):]: value for name, value in rundir.load_best(folder).items() if name.startswith(prefix)}


def freeze_decoder(model, weights, source):
    """Load weights into model.decoder and stop them training; they must fit its layers."""
    try:
        model.decoder.load_state_dict(weights)
    except RuntimeError as error:
        raise UserError(f"train.decoder_from={source}: its decoder does not fit this model's "
                        f"({str(error).splitlines()[-1].strip()}); use the same model.hidden") from None
    model.decoder.requires_grad_(False)
