"""scripts/answer.sh (`make answer`) end to end at a tiny scale: every family at its tuned setting, the
equal-budget diag runs, the gaps of the seed-0 runs, the tuned report; rerun, it skips what is finished."""

import csv
import json
import os
import subprocess

import pytest
from omegaconf import OmegaConf

from conftest import CLI, REPO, TINY
from vae_compare.posteriors import FAMILIES

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]

# TINY without its latent_dim (the script sweeps latent_dim); the answer preset's k-curve needs fewer images
OVERRIDES = [o for o in TINY if not o.startswith("latent_dim=")] + ["eval.k_curve_images=16", "train.epochs=1"]


DIMS = (2, 4)


def setting(run, key):
    """The value an answer run sets for `key`, or None."""
    values = [override.split("=", 1)[1] for override in run.overrides if override.split("=", 1)[0] == key]
    return values[0] if values else None


def same(config_value, override):
    """Whether a composed config value is what the override wrote (1e-3 and 0.001 are the same number)."""
    try:
        return float(config_value) == float(override)
    except (TypeError, ValueError):
        return str(config_value) == override


def answer(tmp_path, scale=None):
    env = {"VAE_COMPARE": str(CLI), "ANSWER_DIR": str(tmp_path / "runs"), "PUBLISH_DIR": str(tmp_path / "answer"),
           "ANSWER_SEEDS": "0", "ANSWER_DIMS": ",".join(map(str, DIMS)), "GAPS_IMAGES": "8", "COLUMNS": "120",
           # the continuation check (tests/test_gaps.py) would take most of this test's time
           "GAPS_OPTIONS": "gaps.check_steps=0",
           **({"ANSWER_SCALE": scale} if scale else {})}
    return subprocess.run(["bash", str(REPO / "scripts" / "answer.sh"), *OVERRIDES], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **env})


def mtimes(folder, name):
    return {p.parent.name: p.stat().st_mtime_ns for p in folder.glob(f"*/{name}")}


def test_answer_runs_every_family_publishes_and_rerun_skips(tmp_path):
    result = answer(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs, published = tmp_path / "runs", tmp_path / "answer"

    # every family's answer runs (the registry's), each at the latent sizes from its min_latent_dim: today diag,
    # cholesky, corr, rank1sum, sqrt at d = 2 and 4; diag widened to cholesky's budget and lowrank (k=4) at d = 4 only
    expected = {(name, str(d), setting(run, "model.match_params") or "")
                for name, family in FAMILIES.items() for run in family.answer_runs
                for d in DIMS if d >= run.min_latent_dim}
    rows = list(csv.DictReader((published / "summary.csv").open()))
    cells = {(row["family.name"], row["latent_dim"], row["model.match_params"]) for row in rows}
    assert len(rows) == len(cells) == len(expected) == 12 and cells == expected, sorted(cells)
    # each family at its tuned setting, not the default (read from the configs: long folder names are shortened)
    configs = {p.parent.parent.name: OmegaConf.load(p) for p in runs.glob("*/.hydra/config.yaml")}
    for name, cfg in configs.items():
        arms = [run for run in FAMILIES[cfg.family.name].answer_runs
                if str(cfg.model.match_params or "") == (setting(run, "model.match_params") or "")]
        assert len(arms) == 1, name
        for override in arms[0].overrides:
            key, value = override.split("=", 1)
            assert same(OmegaConf.select(cfg, key), value), (name, override, OmegaConf.select(cfg, key))
    # the published answer's families and rates, pinned (a family joins the answer with its own answer_runs)
    assert {(cfg.family.name, cfg.train.lr) for cfg in configs.values()} == {
        ("diag", 3e-3), ("cholesky", 3e-3), ("corr", 3e-3), ("lowrank", 3e-3), ("rank1sum", 1e-3), ("sqrt", 1e-3)}

    # the gaps of every seed-0 run, on the same 8 test images
    gaps = mtimes(runs, "gaps.json")
    assert set(gaps) == {name for name, cfg in configs.items() if cfg.seed == 0} == set(configs)
    assert all(json.loads((runs / name / "gaps.json").read_text())["settings"]["images"] == 8 for name in gaps)
    for name in ("report.md", "gaps.csv", "log_px_gain_vs_latent_dim.png", "gaps_approximation_vs_amortization.png",
                 "posterior_ellipses_d2.png", "seconds_per_epoch_vs_latent_dim.png"):
        assert (published / name).is_file(), name
    assert "gain" in (published / "report.md").read_text()

    # rerun: nothing is trained or measured again
    trained = mtimes(runs, "summary.json")
    again = answer(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert mtimes(runs, "summary.json") == trained and mtimes(runs, "gaps.json") == gaps
    assert "measured already" in again.stdout


def test_unknown_scale_is_one_line_and_exit_2(tmp_path):
    result = answer(tmp_path, scale="huge")
    assert result.returncode == 2 and result.stderr.strip() == "error: ANSWER_SCALE must be cpu or full, not 'huge'"
    assert not (tmp_path / "runs").exists()
