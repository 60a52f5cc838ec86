"""scripts/looks.py: the answer's looks merged into one verdict per comparison, and look 2's sweeps (the variants
look 1 left open, and diag)."""

import csv
import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO
from vae_compare.posteriors import FAMILIES
from vae_compare.posteriors.study import answer_sweeps

COLUMNS = ("dataset", "latent_dim", "variant", "n", "gain", "ci_low", "ci_high", "tost_delta_min", "alpha", "verdict")


def write_look(publish, look, rows):
    folder = publish / f"look{look}"
    folder.mkdir(parents=True)
    with (folder / "verdict.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for latent_dim, variant, n, alpha, verdict in rows:
            writer.writerow({"dataset": "mnist", "latent_dim": latent_dim, "variant": variant, "n": n, "gain": "0.1",
                             "ci_low": "-0.5", "ci_high": "0.7", "tost_delta_min": "0.8", "alpha": alpha,
                             "verdict": verdict})


def looks(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "looks.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


spec = importlib.util.spec_from_file_location("looks", REPO / "scripts" / "looks.py")
looks_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(looks_module)


def test_look_2_runs_the_open_variants_and_diag_at_that_size_only(tmp_path):
    write_look(tmp_path, 1, [("8", "cholesky", 4, 0.005, "equivalent"), ("8", "rank1sum(k=8)", 4, 0.005, "inconclusive"),
                             ("32", "cholesky", 4, 0.005, "inconclusive")])
    result = looks("--open", tmp_path, 8)
    assert result.returncode == 0, result.stderr
    expected = [" ".join(sweep) for sweep in answer_sweeps(FAMILIES, ["8"])
                if sweep[1] == "family=rank1sum" or (sweep[1] == "family=diag" and not any(
                    override.startswith("model.match_params=") for override in sweep))]
    assert len(expected) == 2
    assert result.stdout.splitlines() == expected
    # nothing open: no sweep; an open variant that is no answer run: one line, and a failure
    assert looks_module.open_sweeps(tmp_path, "2") == []
    write_look(tmp_path / "other", 1, [("8", "rank1sum(k=3)", 4, 0.005, "inconclusive")])
    with pytest.raises(SystemExit, match="^error: look 1's open rank1sum\\(k=3\\) at latent_dim 8 is no answer run$"):
        looks_module.open_sweeps(tmp_path / "other", "8")


def test_a_comparison_keeps_the_verdict_of_the_look_that_decided_it(tmp_path):
    write_look(tmp_path, 1, [("8", "cholesky", 4, 0.005, "equivalent"), ("8", "rank1sum(k=8)", 4, 0.005, "inconclusive")])
    write_look(tmp_path, 2, [("8", "cholesky", 4, 0.045, "better"), ("8", "rank1sum(k=8)", 8, 0.045, "equivalent")])
    looks_module.main(tmp_path)
    merged = list(csv.DictReader((tmp_path / "verdict.csv").open()))
    assert [(row["variant"], row["look"], row["n"], row["verdict"]) for row in merged] == [
        ("cholesky", "1", "4", "equivalent"), ("rank1sum(k=8)", "2", "8", "equivalent")]
    assert "look 2 at 0.045" in (tmp_path / "looks.md").read_text()
    usage = looks()
    assert usage.returncode == 1 and usage.stderr.startswith("usage: python scripts/looks.py PUBLISH_DIR")
