"""Finding finished runs below a folder and labelling them: variant (family and its own settings) and the
settings that split groups (the other result keys that vary across the runs)."""

import os
from pathlib import Path

from vae_compare import export
from vae_compare.config import RESULT_KEYS, flatten
from vae_compare.posteriors import FAMILIES

# A folder holding any of these is a run folder, finished or not (params.csv is written before training).
RUN_MARKERS = {export.SUMMARY_FILE, export.PARAMS_FILE, export.METRICS_FILE, export.FAILED_FILE}
# Config values that are group dimensions of their own, so they are not "settings".
GROUP_KEYS = {"data.name", "latent_dim", "seed", "model.match_params", "model.match_rank"}


def find_runs(folder: Path):
    """Finished runs below folder (summary.json with status complete), and the count of the others."""
    runs, unfinished = [], 0
    for path, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip .hydra and friends
        if not RUN_MARKERS & set(files):
            continue
        summary = export.read_summary(Path(path))
        if summary is None:
            unfinished += 1
            continue
        config = flatten(summary["config"])
        runs.append({
            "folder": Path(path),
            "path": Path(path).relative_to(folder).as_posix(),
            "summary": summary,
            "config": config,
            "dataset": config["data.name"],
            "latent_dim": config["latent_dim"],
            "seed": config["seed"],
            "family": config["family.name"],
        })
    return runs, unfinished


def config_keys(runs):
    return list(dict.fromkeys(key for run in runs for key in run["config"]))


def varying(configs, keys):
    return [key for key in keys if len({repr(config.get(key)) for config in configs}) > 1]


def show(value):
    if value is None:
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


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


def variant_label(config, family_keys):
    """e.g. "diag", "lowrank(k=4)", "cholesky(offdiag_scale=0.1)", "diag matched→cholesky"."""
    family = config["family.name"]
    uses_rank = family in FAMILIES and FAMILIES[family].uses_rank
    details = [f"k={config['family.rank']}"] if uses_rank else []
    details += [f"{key.split('.', 1)[1]}={show(config.get(key))}" for key in family_keys]
    label = f"{family}({', '.join(details)})" if details else family
    target = config.get("model.match_params")
    if target is not None and target != family:
        label += " matched→" + (f"{target}(k={config['model.match_rank']})" if FAMILIES[target].uses_rank else target)
    return label


def family_order(family):
    """Table order: the order of FAMILIES (diag, the baseline, first); unknown families last."""
    names = list(FAMILIES)
    return names.index(family) if family in names else len(names)


def is_matched(config):
    return config.get("model.match_params") not in (None, config["family.name"])


def series(item):
    """The plot/legend name of a run or group: its variant, and its settings when they vary."""
    return item["variant"] + (f" [{item['setting']}]" if item["setting"] else "")
