"""`vae-compare report FOLDER --select`: the tuning step. For every dataset x latent_dim x family, pick the
setting with the best mean validation ELBO over its seeds; test numbers are never looked at."""

import statistics
from collections import defaultdict

from rich.table import Table

from vae_compare import UserError
from vae_compare.report.collect import family_order, series


def select_settings(runs, split_keys):
    """One row per dataset x latent_dim x family: the chosen series (variant and settings), its mean best
    validation ELBO, the runner-up's, and the overrides that reproduce it."""
    candidates = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if not isinstance(run["summary"].get("best_val_elbo"), (int, float)):
            raise UserError(f"{run['folder']} has no validation ELBO in its summary.json; --select chooses by it")
        candidates[(run["dataset"], run["latent_dim"], run["family"])][series(run)].append(run)
    rows = []
    for (dataset, latent_dim, family), by_series in sorted(candidates.items(),
                                                           key=lambda item: (item[0][:2], family_order(item[0][2]))):
        scored = sorted(((statistics.fmean(r["summary"]["best_val_elbo"] for r in members), name, members)
                         for name, members in by_series.items()), key=lambda item: -item[0])
        best_val, name, members = scored[0]
        config = members[0]["config"]
        keys = [key for key in split_keys if key in config and (key.startswith("family.") or not key.startswith("model.match"))]
        rows.append({
            "dataset": dataset, "latent_dim": latent_dim, "family": family, "selected": name,
            "seeds": len(members), "val_elbo": best_val, "candidates": len(scored),
            "runner_up": scored[1][1] if len(scored) > 1 else "", "runner_up_val_elbo": scored[1][0] if len(scored) > 1 else None,
            # family=<name> selects the family's config group (its defaults), then its own keys as tuned
            "overrides": " ".join([f"family={family}"] + [f"{key}={config[key]}" for key in keys
                                                          if config.get(key) is not None]),
        })
    return rows


def selection_table(rows):
    table = Table(title="settings selected by validation ELBO (test set not used)")
    for column in ("dataset", "d", "family", "selected", "val ELBO", "next best", "val ELBO ", "of"):
        table.add_column(column, justify="right" if "ELBO" in column or column in ("d", "of") else "left")
    for row in rows:
        runner = row["runner_up_val_elbo"]
        table.add_row(row["dataset"], str(row["latent_dim"]), row["family"], row["selected"], f"{row['val_elbo']:.2f}",
                      row["runner_up"], "" if runner is None else f"{runner:.2f}", str(row["candidates"]))
    return table
