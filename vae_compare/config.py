"""The one config schema: every key's type, choices, range and role, declared once.

Hydra composes conf/*.yaml on top of `Config` (stored in Hydra's ConfigStore as `schema`), so a wrong
type, an unknown choice or a misspelt key fails at composition; `validate` adds the range checks that
types cannot express. Adding a config key means adding one field here (with its role and range) and its
default in the YAML file of its group.

A key's role says what it changes:
    result   the trained model (TensorBoard hparams, the resume check, sweep-folder names, report settings)
    eval     only the final evaluation: may differ when a run is resumed or re-evaluated
    runtime  nothing in the results (paths, devices, threads, logging intervals): left out of all of the above
    gaps     the settings of `vae-compare gaps` and `calibrate` (gaps.GapsConfig, calibration.CalibrationConfig): read
             by that command only, given on its command line as gaps.<key>=... or calibration.<key>=...

Every config is made here: a job's by Hydra's compose API (`compose`), a finished run's from its folder with a
command's overrides (`run_config`), the settings of the gaps and calibrate commands (`command_settings`), and a
resumed run is checked against its saved config here (`check_same_config`).
"""

import dataclasses
import enum
import functools
import hashlib
import typing
from dataclasses import dataclass, field
from typing import List, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from vae_compare import UserError
from vae_compare.data import DATASETS
from vae_compare.model import ACTIVATIONS
from vae_compare.posteriors import FAMILIES

RESULT, EVAL, RUNTIME, GAPS = "result", "eval", "runtime", "gaps"


class Choice(str, enum.Enum):
    """A closed set of string values: OmegaConf rejects anything else, and members compare equal to their
    strings, so code reads `cfg.data.binarize == "dynamic"`."""

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)


def choices(name, values):
    return Choice(name, {value: value for value in values})


Device = choices("Device", ("auto", "cpu", "cuda"))
DatasetName = choices("DatasetName", DATASETS)
Binarize = choices("Binarize", ("dynamic", "static", "none"))
FamilyName = choices("FamilyName", FAMILIES)
ScaleTransform = choices("ScaleTransform", ("exp", "softplus"))
OffdiagInit = choices("OffdiagInit", ("zero", "random", "default"))
Activation = choices("Activation", ACTIVATIONS)
LrSchedule = choices("LrSchedule", ("constant", "burda", "plateau"))
Proposal = choices("Proposal", ("encoder", "qstar"))
OutputBias = choices("OutputBias", ("default", "data_mean"))


def key(default=dataclasses.MISSING, role=RESULT, minimum=None, above=None, below=None, factory=None):
    """A schema field: its role, its lower bound (`minimum` inclusive, `above` exclusive) and its upper bound
    (`below`, exclusive)."""
    metadata = {"role": role, "minimum": minimum, "above": above, "below": below}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    name: DatasetName = key("mnist")
    root: Optional[str] = key(None, RUNTIME)
    binarize: Binarize = key("dynamic")
    val_size: int = key(10000, minimum=1)
    train_size: Optional[int] = key(None, minimum=1)
    test_size: Optional[int] = key(None, EVAL, minimum=1)
    eval_binarize_seed: int = key(1234, minimum=0)


@dataclass
class FamilyConfig:
    name: FamilyName = key("diag")
    rank: int = key(0, minimum=0)
    scale_transform: ScaleTransform = key("exp")
    scale_floor: float = key(0.0, minimum=0)
    offdiag_init: OffdiagInit = key("zero")
    offdiag_scale: float = key(0.0, minimum=0)
    # standard deviation of the off-diagonal values at step 0 with offdiag_init=random
    offdiag_init_std: float = key(0.0, minimum=0)
    # fixed epsilon added to the covariance's diagonal (rank1sum: Sigma = V V^T + jitter I)
    jitter: float = key(0.0, minimum=0)


@dataclass
class ModelConfig:
    hidden: List[int] = key(factory=lambda: [512, 256])
    activation: Activation = key("relu")
    match_params: Optional[FamilyName] = key(None)
    match_rank: int = key(4, minimum=1)
    # decoder output bias at step 0: default (PyTorch's Linear init, from the decoder's seeded stream), or
    # data_mean: the logit of each pixel's training mean (clipped to [0.001, 0.999]), Burda et al.'s start
    output_bias: OutputBias = key("default")


@dataclass
class TrainConfig:
    epochs: int = key(10, minimum=1)
    # early stopping: stop after this many epochs without a better validation ELBO (epochs is then the cap)
    patience: Optional[int] = key(None, minimum=1)
    batch_size: int = key(128, minimum=1)
    lr: float = key(1e-3, above=0)
    lr_schedule: LrSchedule = key("constant")
    # lr_schedule=plateau: multiply the rate by lr_decay after lr_decay_patience epochs without a better
    # validation ELBO (counted from the best epoch or the last decay, whichever is later)
    lr_decay: float = key(0.5, above=0, below=1)
    lr_decay_patience: int = key(5, minimum=1)
    # lr_schedule=plateau: stop once the decayed rate would fall below this (null: only train.patience stops)
    lr_min: Optional[float] = key(None, above=0)
    # Adam's epsilon (added to the root of the bias-corrected second moment) and first-moment decay
    adam_eps: float = key(1e-8, above=0)
    adam_beta1: float = key(0.9, minimum=0, below=1)
    kl_weight: float = key(1.0, minimum=0)
    # a finished run folder: train only the encoder, against that run's best decoder with its weights frozen, so
    # that every family meets the identical decoder; `true_decoder` (dataset=synthetic): the generating model's decoder;
    # null: the decoder is trained with the encoder
    decoder_from: Optional[str] = key(None)
    grad_clip: Optional[float] = key(None, above=0)
    image_every: int = key(5, RUNTIME, minimum=1)
    log_every: int = key(50, RUNTIME, minimum=1)
    threads: Optional[int] = key(None, RUNTIME, minimum=1)
    # torch.compile (inductor) of the forward and loss; float rounding differs from eager, nothing else
    compile: bool = key(False, RUNTIME)


@dataclass
class EvalConfig:
    iwae_samples: int = key(1000, EVAL, minimum=1)
    # the importance-sampling proposal of test log p(x): encoder, the run's own q(z|x); or qstar, per image a
    # full-covariance Gaussian started at the encoder's mean and covariance and fitted on the frozen decoder
    # (qstar_steps Adam steps of qstar_samples draws), the same kind of proposal for every family
    log_px_proposal: Proposal = key("qstar", EVAL)
    qstar_steps: int = key(150, EVAL, minimum=1)
    qstar_samples: int = key(4, EVAL, minimum=1)
    chunk_size: Optional[int] = key(None, RUNTIME, minimum=1)
    active_threshold: float = key(0.01, EVAL, minimum=0)
    k_curve_images: int = key(1000, EVAL, minimum=1)
    on_test: bool = key(True, EVAL)


@dataclass
class Config:
    latent_dim: int = key(16, minimum=1)
    seed: int = key(0, minimum=0)
    device: Device = key("auto", RUNTIME)
    resume: Optional[str] = key(None, RUNTIME)
    data: DataConfig = key(factory=DataConfig)
    family: FamilyConfig = key(factory=FamilyConfig)
    model: ModelConfig = key(factory=ModelConfig)
    train: TrainConfig = key(factory=TrainConfig)
    eval: EvalConfig = key(factory=EvalConfig)


ConfigStore.instance().store(name="schema", node=Config)


# ---- sweep-job folder names ----------------------------------------------------------------------------------
# A file name may have at most 255 bytes on the common file systems.
DIRNAME_LIMIT = 200


def short_dirname(name: str) -> str:
    """A sweep job's folder name (its overrides, Hydra's override_dirname), kept within DIRNAME_LIMIT characters:
    a longer one keeps its beginning and ends with a hash of the whole, so a rerun of the sweep finds the same
    folder and two long names never share one. A "/" in a value (a path: train.decoder_from) is written %2F, as
    in a URL, so that the job's folder is one folder, not a tree."""
    name = name.replace("/", "%2F")
    if len(name) <= DIRNAME_LIMIT:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return f"{name[:DIRNAME_LIMIT - 13]}-{digest}"


# conf/config.yaml names sweep-job folders with it; registered on import, in Hydra's launcher workers too
OmegaConf.register_new_resolver("short_dirname", short_dirname, replace=True)


# ---- roles, derived from the schema ---------------------------------------------------------------
def schema_fields(schema=Config, prefix=""):
    """(dotted key, field) of every leaf key of the schema."""
    for item in dataclasses.fields(schema):
        if dataclasses.is_dataclass(item.type):
            yield from schema_fields(item.type, f"{prefix}{item.name}.")
        else:
            yield prefix + item.name, item


def keys_with_role(*roles):
    return [name for name, item in schema_fields() if item.metadata["role"] in roles]


# Keys whose value changes the trained model or the reported numbers (TensorBoard hparams, report settings).
RESULT_KEYS = keys_with_role(RESULT, EVAL)
# Keys that may differ between a run and its resumption or re-evaluation.
RESUMABLE_KEYS = set(keys_with_role(EVAL, RUNTIME))
# Keys that never change results; Hydra's override_dirname leaves them out of sweep-folder names.
RUNTIME_KEYS = set(keys_with_role(RUNTIME))
# Keys `vae-compare evaluate` accepts.
EVALUATE_KEYS = set(keys_with_role(EVAL)) | {"device", "data.root", "eval.chunk_size", "train.threads"}
# The keys of a run's own config that `vae-compare gaps` may change: where the data is, where to compute.
GAPS_RUN_KEYS = ("device", "data.root")


# ---- checks types cannot express ------------------------------------------------------------------
def field_of(dotted):
    return dict(schema_fields())[dotted]


def type_name(dotted):
    """How the schema's type of a key reads in an error message ("an integer", "one of exp, softplus")."""
    kind, optional = field_of(dotted).type, False
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        kind, optional = next(arg for arg in typing.get_args(kind) if arg is not type(None)), True
    if typing.get_origin(kind) in (list, typing.List):
        text = "a list of integers"
    elif isinstance(kind, type) and issubclass(kind, Choice):
        text = "one of " + ", ".join(member.value for member in kind)
    else:
        text = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, str(kind))
    return text + (" or null" if optional else "")


def _require(condition, message):
    if not condition:
        raise UserError(message)


def check_ranges(cfg, schema=Config, prefix=""):
    """Raise UserError naming the first value of `cfg` (the schema's keys below prefix) out of its range."""
    for dotted, item in schema_fields(schema, prefix):
        value = OmegaConf.select(cfg, dotted)
        minimum, above, below = item.metadata["minimum"], item.metadata["above"], item.metadata["below"]
        if value is None or (minimum is None and above is None and below is None):
            continue
        kind = "an integer" if isinstance(value, int) else "a number"
        if minimum is not None:
            _require(value >= minimum, f"{dotted} must be {kind} >= {minimum}, got {value!r}")
        if above is not None:
            _require(value > above, f"{dotted} must be {kind} > {above}, got {value!r}")
        if below is not None:
            _require(value < below, f"{dotted} must be {kind} < {below}, got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the first value out of its range (types and choices are Hydra's checks)."""
    check_ranges(cfg)
    # the family's own rules (its rank range, rank1sum's offdiag_scale > 0)
    family_error = FAMILIES[cfg.family.name].config_error(cfg.family, cfg.latent_dim)
    _require(family_error is None, family_error)
    _require(cfg.family.offdiag_init != "random" or cfg.family.offdiag_init_std > 0,
             "family.offdiag_init=random needs family.offdiag_init_std > 0 (with 0 it is the zero start)")
    target = cfg.model.match_params
    if target is not None and FAMILIES[target].uses_rank:
        match_error = FAMILIES[target].rank_error(cfg.latent_dim, cfg.model.match_rank)
        _require(match_error is None, f"model.match_rank: {match_error}".replace("family.rank ", "the rank "))
    # softplus underflows to 0 for very negative inputs; exp(raw / 2) does not in practice
    _require(cfg.family.scale_floor > 0 or cfg.family.scale_transform == "exp",
             "family.scale_floor must be > 0 with scale_transform=softplus (the scale must stay positive)")
    _require(len(cfg.model.hidden) >= 1 and all(width >= 1 for width in cfg.model.hidden),
             f"model.hidden must be a non-empty list of positive integers, got {list(cfg.model.hidden)!r}")


def plain(cfg) -> dict:
    """The config as plain Python values (choices as strings), for JSON, checkpoints and CSV."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def flatten(config, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists (hidden sizes) become "512-256"."""
    flat = {}
    for name, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{name}."))
        elif isinstance(value, list):
            flat[prefix + name] = "-".join(str(v) for v in value)
        else:
            flat[prefix + name] = value
    return flat


# Keys whose default changed after they were added: the value a run recorded before the key existed had.
BEFORE_KEY = {"eval.log_px_proposal": "encoder"}


def recorded_config(config: dict) -> dict:
    """A run's recorded config (summary.json's), flattened, with what every key added since it was written meant
    then (the schema's default, or BEFORE_KEY's value where the default changed later), so that the report does
    not take the key's absence for a setting that varies."""
    return {**schema_defaults(), **BEFORE_KEY, **flatten(config)}


@functools.cache
def schema_defaults() -> dict:
    """Every schema key's default, flattened: built once, read for every run a report or gaps finds."""
    return flatten(plain(OmegaConf.structured(Config)))


def hparams_of(cfg) -> dict:
    """Flat scalar hyperparameters for TensorBoard: every result and eval key, the same keys for every run."""
    flat = flatten(plain(cfg))
    return {name: "none" if flat.get(name) is None else flat[name] for name in RESULT_KEYS}


# ---- making configs --------------------------------------------------------------------------------------
def compose(overrides, with_hydra=False):
    """The config Hydra would give a job with these overrides (with its `hydra` node if asked)."""
    with initialize_config_module(config_module="vae_compare.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)


def merged(schema, bases, overrides, what):
    """The schema's node with `bases` (configs) and then `overrides` (KEY=VALUE strings) merged on top;
    UserError, one line, naming `what` was bad."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), *bases, OmegaConf.from_dotlist(list(overrides)))
    except Exception as error:  # OmegaConf raises several types for unknown keys and bad values
        raise UserError(f"bad {what}: {str(error).splitlines()[0]}") from None


def run_config(folder, overrides, command="evaluate"):
    """A finished run's own config (FOLDER/.hydra/config.yaml) with `command`'s overrides applied (only
    EVALUATE_KEYS may change), checked against the schema."""
    for override in overrides:
        name = override.split("=", 1)[0]
        if "=" not in override or name not in EVALUATE_KEYS:
            raise UserError(f"{command} takes only {', '.join(sorted(EVALUATE_KEYS))} overrides, got {override!r}")
    cfg = merged(Config, [OmegaConf.load(folder / ".hydra" / "config.yaml")], overrides, "override")
    validate(cfg)
    return cfg


def command_settings(overrides, schema, prefix, command, run_keys=GAPS_RUN_KEYS):
    """(schema node, overrides of the run's own config) of a command on finished runs (gaps, calibrate) from
    `<prefix>.<key>=value` and run_keys overrides; UserError, one line, for anything else or a bad value."""
    own, run_values = [], []
    for override in overrides:
        name = override.split("=", 1)[0]
        if "=" in override and name.startswith(prefix + "."):
            own.append(override[len(prefix) + 1:])
        elif "=" in override and name in run_keys:
            run_values.append(override)
        else:
            raise UserError(f"{command} takes {prefix}.<key>=value and {', '.join(run_keys)} overrides, got "
                            f"{override!r} (keys: {', '.join(f'{prefix}.{item.name}' for item in dataclasses.fields(schema))})")
    settings = merged(schema, [], own, f"{prefix} override")
    check_ranges(OmegaConf.create({prefix: settings}), schema, prefix + ".")
    return settings, run_values


def check_same_config(path, saved: dict, current: dict) -> None:
    """A resumed run must continue the same experiment: only runtime and evaluation keys may differ
    (the final evaluation can be redone)."""
    saved, current = flatten(saved), flatten(current)
    for key in sorted(set(saved) | set(current)):
        if key not in RESUMABLE_KEYS and saved.get(key) != current.get(key):
            raise UserError(f"{path} was trained with {key}={saved.get(key)!r}, this run has {current.get(key)!r}; "
                            f"resume with the run's own settings (vae-compare train resume=<run folder>)")
