"""Checks every config value when a run starts, so that bad input is one clear line, not a traceback."""

from omegaconf import DictConfig, OmegaConf

from vae_compare import UserError
from vae_compare.data import DATASETS
from vae_compare.model import ACTIVATIONS
from vae_compare.posteriors import FAMILIES


def _require(condition, message):
    if not condition:
        raise UserError(message)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(cfg, key, minimum, allow_none=False):
    value = OmegaConf.select(cfg, key)
    if allow_none and value is None:
        return
    _require(_is_int(value) and value >= minimum, f"{key} must be an integer >= {minimum}, got {value!r}")


def _check_number(cfg, key, minimum, strictly=True, allow_none=False):
    value = OmegaConf.select(cfg, key)
    if allow_none and value is None:
        return
    relation = ">" if strictly else ">="
    ok = _is_number(value) and (value > minimum if strictly else value >= minimum)
    _require(ok, f"{key} must be a number {relation} {minimum}, got {value!r}")


def _check_choice(cfg, key, choices):
    value = OmegaConf.select(cfg, key)
    _require(value in choices, f"{key} must be one of {', '.join(choices)}; got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the first bad value."""
    _check_int(cfg, "latent_dim", 1)
    _check_int(cfg, "seed", 0)
    _check_choice(cfg, "device", ("auto", "cpu", "cuda"))

    _check_choice(cfg, "data.name", tuple(DATASETS))
    _check_choice(cfg, "data.binarize", ("dynamic", "static", "none"))
    _check_int(cfg, "data.val_size", 1)
    _check_int(cfg, "data.train_size", 1, allow_none=True)
    _check_int(cfg, "data.test_size", 1, allow_none=True)
    _check_int(cfg, "data.eval_binarize_seed", 0)
    root = cfg.data.root
    _require(root is None or isinstance(root, str), f"data.root must be a folder path, got {root!r}")

    _check_choice(cfg, "family.name", tuple(FAMILIES))
    _check_choice(cfg, "family.scale_transform", ("exp", "softplus"))
    _check_number(cfg, "family.scale_floor", 0, strictly=False)
    _check_choice(cfg, "family.offdiag_init", ("zero", "default"))
    _check_number(cfg, "family.offdiag_scale", 0, strictly=False)
    _check_int(cfg, "family.rank", 0)
    rank, latent_dim, name = cfg.family.rank, cfg.latent_dim, cfg.family.name
    if FAMILIES[name].uses_rank:
        _require(1 <= rank <= latent_dim, f"family.rank must be in 1..latent_dim ({latent_dim}) for {name}, got {rank}")
    else:
        _require(rank == 0, f"family.rank applies to lowrank only; {name} needs rank=0, got {rank}")
    # softplus underflows to 0 for very negative inputs; exp(raw / 2) does not in practice
    _require(cfg.family.scale_floor > 0 or cfg.family.scale_transform == "exp",
             "family.scale_floor must be > 0 with scale_transform=softplus (the scale must stay positive)")

    hidden = cfg.model.hidden
    _require(OmegaConf.is_list(hidden) and len(hidden) >= 1 and all(_is_int(h) and h >= 1 for h in hidden),
             f"model.hidden must be a non-empty list of positive integers, got {hidden!r}")
    _check_choice(cfg, "model.activation", tuple(ACTIVATIONS))
    match = cfg.model.match_params
    _require(match is None or match in FAMILIES, f"model.match_params must be null or one of {', '.join(FAMILIES)}; got {match!r}")

    _check_int(cfg, "model.match_rank", 1)
    _check_int(cfg, "train.epochs", 1)
    _check_int(cfg, "train.batch_size", 1)
    _check_number(cfg, "train.lr", 0)
    _check_choice(cfg, "train.lr_schedule", ("constant", "burda"))
    _check_number(cfg, "train.kl_weight", 0, strictly=False)
    _check_number(cfg, "train.grad_clip", 0, allow_none=True)
    _check_int(cfg, "train.image_every", 1)
    _check_int(cfg, "train.log_every", 1)
    _check_int(cfg, "train.threads", 1, allow_none=True)

    _check_int(cfg, "eval.iwae_samples", 1)
    _check_int(cfg, "eval.chunk_size", 1, allow_none=True)
    _check_number(cfg, "eval.active_threshold", 0, strictly=False)
