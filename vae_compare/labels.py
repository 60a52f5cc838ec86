"""How a run is named in tables, plots and titles: its variant, the family with the settings that tell it apart."""

from vae_compare.config import flatten, plain
from vae_compare.posteriors import FAMILIES


def show(value):
    """A config value as the labels write it: null, 0.001, cholesky."""
    if value is None:
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


def variant_label(config, family_keys):
    """e.g. "diag", "lowrank(k=4)", "cholesky(offdiag_scale=0.1)", "diag matched→cholesky", from a flat config
    (flatten) and the family keys that tell variants of one family apart."""
    family = config["family.name"]
    uses_rank = family in FAMILIES and FAMILIES[family].uses_rank
    details = [f"k={config['family.rank']}"] if uses_rank else []
    details += [f"{key.split('.', 1)[1]}={show(config.get(key))}" for key in family_keys]
    label = f"{family}({', '.join(details)})" if details else family
    target = config.get("model.match_params")
    if target is not None and target != family:
        label += " matched→" + (f"{target}(k={config['model.match_rank']})" if FAMILIES[target].uses_rank else target)
    return label


def run_label(cfg):
    """One run's family as the report names it, e.g. "lowrank(k=4)"."""
    return variant_label(flatten(plain(cfg)), [])
