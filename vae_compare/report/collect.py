"""Labelling the finished runs (rundir.find_runs) for the report: variant (family and its own settings) and the
settings that split groups (the other result keys that vary across the runs)."""

from vae_compare.config import RESULT_KEYS
from vae_compare.labels import show, variant_label
from vae_compare.posteriors import FAMILIES

# Config values that are group dimensions of their own, so they are not "settings".
GROUP_KEYS = {"data.name", "latent_dim", "seed", "model.match_params", "model.match_rank"}


def config_keys(runs):
    return list(dict.fromkeys(key for run in runs for key in run["config"]))


def varying(configs, keys):
    return [key for key in keys if len({repr(config.get(key)) for config in configs}) > 1]


def label_runs(runs, tuned=False):
    """Give every run its variant and settings labels; returns the config keys that split groups.

    tuned: each family was run at its own tuned setting (report --tuned): the settings that vary become part
    of each variant's label instead of splitting groups, so every family is compared with diag as tuned."""
    all_keys = config_keys(runs)
    # config values that do not change results never split groups (but still go into summary.csv)
    candidates = [k for k in all_keys if k in RESULT_KEYS and k not in GROUP_KEYS and not k.startswith("family.")]
    setting_keys = varying([run["config"] for run in runs], candidates)
    # family settings split only within one family: diag's scale_transform differs from cholesky's by default
    family_keys = {}
    for family in {run["family"] for run in runs}:
        configs = [run["config"] for run in runs if run["family"] == family]
        own = [k for k in all_keys if k.startswith("family.") and k not in ("family.name", "family.rank")]
        family_keys[family] = varying(configs, own)
    for run in runs:
        config = run["config"]
        run["variant"] = variant_label(config, family_keys[run["family"]])
        run["setting"] = ", ".join(f"{k}={show(config.get(k))}" for k in setting_keys)
        if tuned and run["setting"]:
            run["variant"], run["setting"] = f"{run['variant']} [{run['setting']}]", ""
    return setting_keys, sorted({k for keys in family_keys.values() for k in keys})


def family_order(family):
    """Table order: the order of FAMILIES (diag, the baseline, first); unknown families last."""
    names = list(FAMILIES)
    return names.index(family) if family in names else len(names)


def is_matched(config):
    return config.get("model.match_params") not in (None, config["family.name"])


def series(item):
    """The plot/legend name of a run or group: its variant, and its settings when they vary."""
    return item["variant"] + (f" [{item['setting']}]" if item["setting"] else "")
