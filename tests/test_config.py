"""The one config schema: every list of keys derives from it, and it rejects bad values at composition."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from vae_compare import UserError
from vae_compare.config import compose
from vae_compare.config import RESULT_KEYS, RUNTIME_KEYS, hparams_of, plain, schema_fields, validate, flatten


def test_sweep_folder_names_leave_out_exactly_the_runtime_keys():
    cfg = compose([], with_hydra=True)
    assert set(cfg.hydra.job.config.override_dirname.exclude_keys) == RUNTIME_KEYS


def test_every_config_key_is_in_the_schema_and_every_result_key_reaches_hparams():
    cfg = compose(["family=lowrank", "family.rank=2"])
    composed = set(flatten(plain(cfg)))
    assert composed == {name for name, _ in schema_fields()}
    hparams = hparams_of(cfg)
    assert set(hparams) == set(RESULT_KEYS)
    assert all(isinstance(value, (int, float, str, bool)) for value in hparams.values())
    assert {"model.match_rank", "data.train_size", "data.val_size", "eval.iwae_samples"} <= set(hparams)
    assert not RUNTIME_KEYS & set(hparams)


@pytest.mark.parametrize("override", ["train.no_such_key=1", "latent_dim=two", "data.binarize=sometimes",
                                      "family.scale_transform=tanh"])
def test_schema_rejects_bad_keys_and_types(override):
    with pytest.raises(ConfigCompositionException):
        compose([override])


@pytest.mark.parametrize("override,message", [
    ("latent_dim=0", "latent_dim must be an integer >= 1"),
    ("train.lr=0", "train.lr must be a number > 0"),
    ("family.scale_floor=-1", "family.scale_floor must be a number >= 0"),
])
def test_ranges_are_checked(override, message):
    with pytest.raises(UserError, match=message):
        validate(compose([override]))


def test_choices_compare_as_strings_and_save_as_strings():
    cfg = compose(["family=cholesky"])
    assert cfg.family.name == "cholesky" and f"{cfg.family.name}" == "cholesky"
    assert OmegaConf.to_yaml(plain(cfg)).count("cholesky") == 1


def test_long_sweep_folder_names_are_shortened_and_stay_distinct():
    from vae_compare.config import DIRNAME_LIMIT, short_dirname

    short = "family=diag,latent_dim=2,seed=0"
    assert short_dirname(short) == short
    long_a = ",".join(f"data.key{i}=value{i}" for i in range(30))
    long_b = long_a.replace("value29", "value28")
    assert len(short_dirname(long_a)) == DIRNAME_LIMIT and short_dirname(long_a) == short_dirname(long_a)
    assert short_dirname(long_a) != short_dirname(long_b)
    assert short_dirname(long_a).startswith(long_a[:100])


def test_a_path_in_a_sweep_override_names_one_folder():
    from vae_compare.config import short_dirname

    name = short_dirname("family=diag,train.decoder_from=/runs/source")
    assert "/" not in name and name == "family=diag,train.decoder_from=%2Fruns%2Fsource"


def test_a_recorded_config_gets_the_default_of_a_key_added_since():
    from vae_compare.config import recorded_config

    old = {"latent_dim": 8, "eval": {"iwae_samples": 1000}}  # written before eval.log_px_proposal existed
    flat = recorded_config(old)
    assert flat["latent_dim"] == 8 and flat["eval.iwae_samples"] == 1000
    assert flat["eval.log_px_proposal"] == "encoder" and flat["train.decoder_from"] is None
