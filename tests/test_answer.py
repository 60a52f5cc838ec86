"""scripts/answer.sh (`make answer`) end to end at a tiny scale: every family at its tuned setting, the
equal-budget diag runs, the gaps of the seed-0 runs, the tuned report; rerun, it skips what is finished."""

import csv
import json
import os
import subprocess

import pytest
from omegaconf import OmegaConf

from conftest import CLI, REPO, TINY

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]

# TINY without its latent_dim (the script sweeps latent_dim); the answer preset's k-curve needs fewer images
OVERRIDES = [o for o in TINY if not o.startswith("latent_dim=")] + ["eval.k_curve_images=16", "train.epochs=1"]


def answer(tmp_path, scale=None):
    env = {"VAE_COMPARE": str(CLI), "ANSWER_DIR": str(tmp_path / "runs"), "PUBLISH_DIR": str(tmp_path / "answer"),
           "ANSWER_SEEDS": "0", "ANSWER_DIMS": "2,4", "GAPS_IMAGES": "8", "COLUMNS": "120",
           **({"ANSWER_SCALE": scale} if scale else {})}
    return subprocess.run(["bash", str(REPO / "scripts" / "answer.sh"), *OVERRIDES], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **env})


def mtimes(folder, name):
    return {p.parent.name: p.stat().st_mtime_ns for p in folder.glob(f"*/{name}")}


def test_answer_runs_every_family_publishes_and_rerun_skips(tmp_path):
    result = answer(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs, published = tmp_path / "runs", tmp_path / "answer"

    # diag, cholesky, corr, rank1sum at d = 2 and 4; diag widened to cholesky's budget and lowrank (k=4) at d = 4 only
    rows = list(csv.DictReader((published / "summary.csv").open()))
    cells = {(row["family.name"], row["latent_dim"], row["model.match_params"]) for row in rows}
    assert len(rows) == len(cells) == 10, sorted(cells)
    assert {row["family.name"] for row in rows} == {"diag", "cholesky", "corr", "rank1sum", "lowrank"}
    assert {row["latent_dim"] for row in rows if row["family.name"] == "lowrank"} == {"4"}
    assert {row["latent_dim"] for row in rows if row["model.match_params"] == "cholesky"} == {"4"}
    # each family at its tuned setting, not the default (read from the configs: long folder names are shortened)
    configs = {p.parent.parent.name: OmegaConf.load(p) for p in runs.glob("*/.hydra/config.yaml")}
    assert {(cfg.family.name, cfg.train.lr) for cfg in configs.values()} == {
        ("diag", 3e-3), ("cholesky", 3e-3), ("corr", 3e-3), ("lowrank", 3e-3), ("rank1sum", 1e-3)}

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
