"""Read the training-budget measurement (scripts/convergence.sh) back from each run's metrics.csv.

For every schedule and family: the seed mean and sd of the best validation ELBO so far against epochs, and what
each early-stopping patience would have given (the epoch it stops at, the validation ELBO lost against the run's
own best over the whole run); where each run's own rule stopped it (runs/fast: the faster rule tried for the
answer, lr 3e-3 halved after 2 flat epochs, softplus diag, stopped by its rule and cut in its final evaluation). A patience shorter than the one the runs were trained with can be read back exactly:
the trajectory up to its stop is the same. Writes convergence.md, convergence.csv and convergence.png to --out.

Usage: python scripts/convergence.py outputs/convergence_runs --out outputs/convergence
"""

import argparse
import csv
import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from vae_compare.schedule import stops_early

EPOCHS_SHOWN = (10, 20, 40, 60, 80, 100, 120, 150, 200, 250, 300)
PATIENCES = (3, 5, 10, 15, 20)
# the budget convergence.sh trains with, replayed on every run's curve (also on runs trained without its floor)
CHOSEN = OmegaConf.create({"lr_schedule": "plateau", "lr": 1e-3, "lr_decay": 0.5, "lr_decay_patience": 5,
                           "lr_min": 1e-5, "patience": 20})


def read_runs(root: Path):
    """One dict per run folder below root: schedule (its parent folder), family, seed, the val ELBO per epoch."""
    runs = []
    for metrics in sorted(root.glob("*/*/metrics.csv")):
        folder = metrics.parent
        config = dict(part.split("=", 1) for part in folder.name.split(","))
        rows = list(csv.DictReader(metrics.open()))
        summary = folder / "summary.json"
        runs.append({
            "schedule": folder.parent.name, "family": config["family"], "seed": int(config["seed"]),
            "val_elbo": [float(row["val_elbo"]) for row in rows], "lr": [float(row["lr"]) for row in rows],
            "summary": json.loads(summary.read_text()) if summary.exists() else None,
        })
    return runs


def running_best(values):
    best, out = float("-inf"), []
    for value in values:
        best = max(best, value)
        out.append(best)
    return out


def stop_epoch(values, patience):
    """The epoch (1-based) at which early stopping with this patience ends the run, or None if it never does."""
    best, best_epoch = float("-inf"), 0
    for epoch, value in enumerate(values, start=1):
        if value > best:
            best, best_epoch = value, epoch
        if epoch - best_epoch >= patience:
            return epoch
    return None


def patience_rows(runs, trained_patience):
    rows = []
    for run in runs:
        values, overall = run["val_elbo"], max(run["val_elbo"])
        for patience in PATIENCES:
            if trained_patience.get(run["schedule"]) is not None and patience > trained_patience[run["schedule"]]:
                continue
            stop = stop_epoch(values, patience)
            reached = max(values[:stop]) if stop else overall
            rows.append({"schedule": run["schedule"], "family": run["family"], "seed": run["seed"],
                         "patience": patience, "stop_epoch": stop if stop else f">{len(values)}",
                         "best_val_elbo": round(reached, 3), "lost_vs_run_best": round(overall - reached, 3),
                         "lr_at_stop": run["lr"][(stop or len(values)) - 1]})
    return rows


def chosen_rule_rows(runs):
    """Where the chosen rule stops each plateau run, and what it loses against the run's best over the whole curve."""
    rows = []
    for run in (run for run in runs if run["schedule"] == "plateau"):
        values = run["val_elbo"]
        stop = next((e for e in range(1, len(values) + 1) if stops_early(CHOSEN, values[:e])), None)
        reached = max(values[:stop]) if stop else max(values)
        rows.append({"schedule": run["schedule"], "family": run["family"], "seed": run["seed"],
                     "epochs_run": len(values), "stop_epoch": stop if stop else f">{len(values)}",
                     "best_val_elbo": round(reached, 3), "lost_vs_run_best": round(max(values) - reached, 3)})
    return rows


def own_rule_rows(runs):
    """Each run as its own rule left it: epochs trained, the best epoch and its validation ELBO, the last rate."""
    rows = []
    for run in runs:
        values = run["val_elbo"]
        best = max(range(len(values)), key=values.__getitem__)
        rows.append({"schedule": run["schedule"], "family": run["family"], "seed": run["seed"],
                     "start_lr": run["lr"][0], "epochs_run": len(values), "best_epoch": best + 1,
                     "best_val_elbo": round(values[best], 3), "last_lr": run["lr"][-1]})
    return rows


def spread_rows(runs):
    rows = []
    groups = sorted({(run["schedule"], run["family"]) for run in runs})
    for schedule, family in groups:
        members = [run for run in runs if (run["schedule"], run["family"]) == (schedule, family)]
        for epoch in EPOCHS_SHOWN:
            # a finished run that stopped before this epoch keeps its best (the model it hands on); a run cut short
            # before it says nothing about it
            counted = [run for run in members if len(run["val_elbo"]) >= epoch or run["summary"] is not None]
            if not any(len(run["val_elbo"]) >= epoch for run in counted):
                break
            values = [running_best(run["val_elbo"])[min(epoch, len(run["val_elbo"])) - 1] for run in counted]
            rows.append({"schedule": schedule, "family": family, "epoch": epoch, "seeds": len(values),
                         "mean_best_val_elbo": round(statistics.fmean(values), 3),
                         "sd": round(statistics.stdev(values), 3) if len(values) > 1 else ""})
    return rows


def markdown(rows):
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def plot(runs, path):
    figure = Figure(figsize=(10, 4))
    curves, spread = figure.subplots(1, 2)
    colours = {"diag": "tab:blue", "cholesky": "tab:orange"}
    styles = {"plateau": "-", "constant": ":", "fast": "--"}
    for run in runs:
        curves.plot(range(1, len(run["val_elbo"]) + 1), running_best(run["val_elbo"]), styles.get(run["schedule"], "-"),
                    color=colours.get(run["family"]), lw=1, label=f"{run['family']} {run['schedule']} s{run['seed']}")
    curves.set(xlabel="epoch", ylabel="best validation ELBO so far (nats)", ylim=(-112, -100))
    curves.legend(fontsize=6, ncol=2)
    for schedule, family in sorted({(run["schedule"], run["family"]) for run in runs}):
        members = [run["val_elbo"] for run in runs if (run["schedule"], run["family"]) == (schedule, family)]
        if len(members) < 2:
            continue
        # at each epoch, the runs that got that far (a run cut short says nothing about later epochs)
        epochs = [e for e in range(1, max(map(len, members)) + 1) if sum(len(m) >= e for m in members) >= 2]
        sds = [statistics.stdev(running_best(m)[e - 1] for m in members if len(m) >= e) for e in epochs]
        spread.plot(epochs, sds, styles.get(schedule, "-"), color=colours.get(family),
                    label=f"{family} {schedule} (runs that reached the epoch)")
    spread.set(xlabel="epoch", ylabel="seed sd of best validation ELBO (nats)", yscale="log")
    spread.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def finished_spread(results):
    """Per schedule and family: the seeds' mean and sd of the epochs trained, best validation ELBO and test log
    p(x) (the sd that plans the seeds of the answer)."""
    rows = []
    for key in sorted({(row["schedule"], row["family"]) for row in results}):
        members = [row for row in results if (row["schedule"], row["family"]) == key]
        row = {"schedule": key[0], "family": key[1], "seeds": len(members)}
        for name in ("epochs", "best_val_elbo", "test_log_px"):
            values = [member[name] for member in members]
            row[f"{name}_mean"] = round(statistics.fmean(values), 3)
            row[f"{name}_sd"] = round(statistics.stdev(values), 3) if len(values) > 1 else None
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder scripts/convergence.sh wrote (one sub-folder per schedule)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = read_runs(args.root)
    if not runs:
        raise SystemExit(f"error: no run folders with metrics.csv under {args.root}")
    trained_patience = {}
    for run in runs:
        if run["summary"] is not None:
            trained_patience[run["schedule"]] = run["summary"]["config"]["train"]["patience"]
    args.out.mkdir(parents=True, exist_ok=True)
    spread, patience = spread_rows(runs), patience_rows(runs, trained_patience)
    finished = [run for run in runs if run["summary"] is not None]
    results = [{"schedule": run["schedule"], "family": run["family"], "seed": run["seed"],
                "epochs": run["summary"]["epochs_trained"], "best_epoch": run["summary"]["best_epoch"],
                "best_val_elbo": round(run["summary"]["best_val_elbo"], 3),
                "test_log_px": round(run["summary"]["test"]["log_px"], 3)} for run in finished]
    with (args.out / "convergence.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(patience[0]))
        writer.writeheader()
        writer.writerows(patience)
    plot(runs, args.out / "convergence.png")
    text = ["# Training budget: validation ELBO against epochs", "",
            f"{len(runs)} runs ({len(finished)} finished) read from `{args.root}` by `python scripts/convergence.py`.",
            "", "## Seed spread of the best validation ELBO so far", "", markdown(spread), "",
            "## The chosen rule (lr 1e-3 halved after 5 flat epochs, stop below 1e-5 or after 20 flat epochs)", "",
            markdown(chosen_rule_rows(runs)), "",
            "## Each run under its own rule (fast: lr 3e-3 halved after 2 flat epochs, softplus diag)", "",
            markdown(own_rule_rows(runs)), "",
            "## What each patience would have given", "", markdown(patience), ""]
    if results:
        text += ["## Finished runs", "", markdown(results), "", "## Their seed spread", "",
                 markdown(finished_spread(results)), ""]
    text += ["![convergence](convergence.png)", ""]
    (args.out / "convergence.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
