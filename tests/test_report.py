"""Check `vae-compare report` on fake run folders: files written, paired-gain math, verdict, bad input.

The run folders are built here with made-up numbers in the layout a real run writes (summary.json,
metrics.csv, params.csv); no model is trained.
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from vae_compare import UserError
from vae_compare.report import build_report, main, plots
from vae_compare.report.collect import series
from vae_compare.report.plots import PLOTS
from vae_compare.report.render import gain_text

# each test builds a report (tables, plots) from fixture runs: seconds each
pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAMILY_DEFAULTS = {
    "diag": {"rank": 0, "scale_transform": "exp", "scale_floor": 0.0, "offdiag_scale": 0.0},
    "cholesky": {"rank": 0, "scale_transform": "softplus", "scale_floor": 0.001, "offdiag_scale": 0.01},
    "lowrank": {"rank": 4, "scale_transform": "softplus", "scale_floor": 0.001, "offdiag_scale": 0.01},
}


def head_size(family, d, k):
    return {"diag": 2 * d, "cholesky": d + d * (d + 1) // 2, "lowrank": d * (k + 2)}[family]


def make_run(folder, family="diag", latent_dim=8, seed=0, log_px=-100.0, elbo=None, rank=None, match=None,
             lr=0.001, epochs=3, status="complete", **family_settings):
    """A run folder as training leaves it; ELBO defaults to log p(x) - 5."""
    folder.mkdir(parents=True)
    settings = {**FAMILY_DEFAULTS[family], **family_settings}
    if rank is not None:
        settings["rank"] = rank
    config = {
        "data": {"name": "mnist", "root": "/data", "binarize": "dynamic", "val_size": 500, "train_size": 2000,
                 "test_size": 200, "eval_binarize_seed": 1234},
        "family": {"name": family, "offdiag_init": "zero", **settings},
        "model": {"hidden": [512, 256], "activation": "relu", "match_params": match, "match_rank": 4},
        "train": {"epochs": epochs, "batch_size": 128, "lr": lr, "lr_schedule": "constant", "kl_weight": 1.0,
                  "grad_clip": None, "image_every": 5, "log_every": 50, "threads": None},
        "eval": {"iwae_samples": 50, "chunk_size": None, "active_threshold": 0.01},
        "latent_dim": latent_dim, "seed": seed, "device": "auto", "resume": None,
    }
    head = head_size(family, latent_dim, settings["rank"])
    widen = 1000 if match else 0  # equal-budget runs have wider hidden layers
    encoder = 784 * 512 + 512 + 512 * 256 + 256 + 256 * head + head + widen
    decoder = latent_dim * 256 + 256 + 256 * 512 + 512 + 512 * 784 + 784 + widen
    params = {"family": family, "latent_dim": latent_dim, "rank": settings["rank"], "hidden": "512-256",
              "head_outputs": head, "head_formula": head, "encoder_params": encoder, "decoder_params": decoder,
              "total_params": encoder + decoder}
    elbo = log_px - 5.0 if elbo is None else elbo
    val = [elbo - 10.0 / (epoch + 1) for epoch in range(epochs)]
    summary = {
        "status": status, "config": config, "device": "cpu", "torch": "2.14.1", "data_folder": "/data",
        "params": params, "best_epoch": epochs, "best_val_elbo": max(val), "seconds_per_epoch": 9.0 + head / 100,
        "images_per_second": 240.0,
        "test": {"elbo": elbo, "kl": 20.0, "recon": -elbo - 20.0, "log_px": log_px, "log_px_stderr": 3.3,
                 "iwae_samples": 50, "iwae_seconds": 0.3, "active_units": min(latent_dim, 5),
                 "offdiag_corr": 0.0 if family == "diag" else 0.05, "logdet_gap": 0.0 if family == "diag" else 0.4,
                 "condition_number": 1.3},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "lr", "train_elbo", "train_kl", "train_recon", "train_seconds",
                         "train_images_per_second", "val_elbo", "val_kl", "val_recon"])
        for epoch, value in enumerate(val, 1):
            writer.writerow([epoch, lr, value - 1, 20, -value + 19, 9.0, 240.0, value, 20, -value - 20])
    (folder / "params.csv").write_text(",".join(params) + "\n" + ",".join(str(v) for v in params.values()) + "\n")


# d=8: cholesky beats diag by 1, 2, 3 nats (seeds 0, 1, 2), lowrank(k=2) by 0.5, 0.6, 0.7.
# d=2: diag wins; cholesky is 0.5 and 0.7 nats worse in log p(x) but 1 nat better in ELBO.
DIAG_8 = [-100.0, -101.0, -102.0]
DIAG_2 = [-150.0, -151.0]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    for seed, base in enumerate(DIAG_8):
        make_run(root / "sweep1" / f"diag_d8_s{seed}", "diag", 8, seed, base)
        make_run(root / "sweep1" / f"chol_d8_s{seed}", "cholesky", 8, seed, base + seed + 1)
        make_run(root / "sweep1" / f"lowrank_d8_s{seed}", "lowrank", 8, seed, base + 0.5 + seed / 10, rank=2)
    make_run(root / "sweep1" / "diag_matched_d8_s0", "diag", 8, 0, -100.2, match="cholesky")
    for seed, base in enumerate(DIAG_2):
        make_run(root / "sweep2" / f"diag_d2_s{seed}", "diag", 2, seed, base, elbo=base - 5)
        make_run(root / "sweep2" / f"chol_d2_s{seed}", "cholesky", 2, seed, base - 0.5 - seed / 5, elbo=base - 4)
        make_run(root / "sweep2" / f"lowrank_d2_s{seed}", "lowrank", 2, seed, base - 1 - seed / 5, rank=2)
    # three unfinished runs: still training, summary not complete, failed before training
    (root / "sweep1" / "running").mkdir()
    (root / "sweep1" / "running" / "params.csv").write_text("family\ndiag\n")
    (root / "sweep1" / "running" / "metrics.csv").write_text("epoch,val_elbo\n1,-120\n")
    make_run(root / "sweep2" / "half", "cholesky", 2, 5, -1.0, status="training")
    (root / "sweep2" / "failed").mkdir()
    (root / "sweep2" / "failed" / "failed.txt").write_text("job [family=x] failed: bad\n")
    out = root / "report"
    result = build_report(root, out, console=Console(file=io.StringIO(), width=200))
    return root, out, result


def group(result, latent_dim, variant):
    (row,) = [g for g in result["groups"] if g["latent_dim"] == latent_dim and g["variant"] == variant]
    return row


def test_summary_csv_has_one_row_per_finished_run(sweep):
    root, out, result = sweep
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert result["runs"] == len(rows) == 3 * 3 + 1 + 2 * 3
    assert {row["run"] for row in rows} >= {"sweep1/chol_d8_s2", "sweep2/diag_d2_s0", "sweep1/diag_matched_d8_s0"}
    columns = set(rows[0])
    assert {"run", "data.name", "family.name", "family.rank", "latent_dim", "seed", "model.match_params",
            "best_val_elbo", "best_epoch", "head_outputs", "head_formula", "encoder_params", "decoder_params",
            "total_params", "hidden", "seconds_per_epoch"} <= columns
    assert {f"test_{key}" for key in ("elbo", "kl", "recon", "log_px", "log_px_stderr", "iwae_samples",
                                      "active_units", "offdiag_corr", "logdet_gap", "condition_number")} <= columns
    # config values that vary are columns; the ones shared by every run are not
    assert {"family.scale_transform", "family.offdiag_scale"} <= columns
    assert "train.lr" not in columns and "data.binarize" not in columns
    chol = next(row for row in rows if row["run"] == "sweep1/chol_d8_s1")
    assert float(chol["test_log_px"]) == -99.0 and chol["family.name"] == "cholesky" and chol["seed"] == "1"


def test_unfinished_runs_are_ignored_and_counted(sweep):
    _, out, result = sweep
    assert result["unfinished"] == 3
    assert "3 unfinished runs ignored" in (out / "report.md").read_text()
    assert all(g["seeds"] != [5] for g in result["groups"])


def test_plots_are_png_and_linked(sweep):
    _, out, _ = sweep
    report = (out / "report.md").read_text()
    for name, _, _ in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in report
    assert len(PLOTS) == 6
    assert not list(out.glob("posterior_ellipses*"))  # these fake runs saved no posterior sample


def test_parameter_table(sweep):
    _, out, _ = sweep
    report = (out / "report.md").read_text()
    # d=8: diag 2d = 16, cholesky d + d(d+1)/2 = 44, lowrank d(k+2) = 32
    assert "| 8 | diag | 2d | 16 | 16 |" in report
    assert "| 8 | cholesky | d + d(d+1)/2 | 44 | 44 |" in report
    assert "| 8 | lowrank(k=2) | d(k+2) | 32 | 32 |" in report


def test_other_settings_split_groups(tmp_path):
    """Varying offdiag_scale names the variant; varying lr splits the cells diag is paired within."""
    for seed in (0, 1):
        for lr, shift in ((0.001, 0.0), (0.0003, -10.0)):
            make_run(tmp_path / f"diag_{lr}_{seed}", "diag", 4, seed, -120.0 + shift - seed, lr=lr)
            make_run(tmp_path / f"chol_{lr}_{seed}", "cholesky", 4, seed, -119.0 + shift - seed, lr=lr)
        make_run(tmp_path / f"chol_big_{seed}", "cholesky", 4, seed, -121.0 - seed, offdiag_scale=0.1)
    console = Console(width=100, record=True, file=io.StringIO())
    result = build_report(tmp_path, console=console)
    assert_console_rows_are_one_line(console, result["groups"])
    labels = {(g["setting"], g["variant"]) for g in result["groups"]}
    assert ("train.lr=0.001", "cholesky(offdiag_scale=0.1)") in labels
    assert ("train.lr=0.0003", "cholesky(offdiag_scale=0.01)") in labels
    for g in result["groups"]:
        if g["family"] == "cholesky":
            assert g["baseline"] == "diag" and g["gain_n"] == 2
            assert g["gain"] == pytest.approx(-1.0 if "0.1)" in g["variant"] else 1.0)
    for name, _, _ in PLOTS:  # one latent_dim only: the plots still render
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_main_writes_to_out(sweep, tmp_path):
    root, _, _ = sweep
    main([str(root / "sweep2"), "--out", str(tmp_path / "r")])
    assert "6 finished runs" in (tmp_path / "r" / "report.md").read_text()


def test_main_rejects_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        main([str(tmp_path / "missing")])
    with pytest.raises(UserError, match="no finished runs"):
        main([str(tmp_path)])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "failed.txt").write_text("failed\n")
    with pytest.raises(UserError, match="1 unfinished"):
        main([str(tmp_path)])


def test_select_picks_each_familys_setting_by_validation_elbo_only(tmp_path):
    """Two learning rates per family; the better validation ELBO wins even when its test log p(x) is worse."""
    for seed in (0, 1):
        # diag: lr 3e-3 has the better validation ELBO (epochs of val ELBO end higher) but the worse test log p(x)
        make_run(tmp_path / f"diag_lr1_s{seed}", "diag", 8, seed, -90.0, lr=1e-3, elbo=-110)
        make_run(tmp_path / f"diag_lr3_s{seed}", "diag", 8, seed, -95.0, lr=3e-3, elbo=-100)
        make_run(tmp_path / f"chol_lr1_s{seed}", "cholesky", 8, seed, -99.0, lr=1e-3, elbo=-101)
        make_run(tmp_path / f"chol_lr3_s{seed}", "cholesky", 8, seed, -89.0, lr=3e-3, elbo=-104)
    result = build_report(tmp_path, console=Console(file=io.StringIO(), width=200), select=True)
    chosen = {row["family"]: row for row in result["selected"]}
    assert "train.lr=0.003" in chosen["diag"]["overrides"] and chosen["diag"]["val_elbo"] == pytest.approx(-100 - 10 / 3)
    # overrides a user can paste: the family's config group, not only its name
    assert chosen["diag"]["overrides"].startswith("family=diag ") and "family.name" not in chosen["diag"]["overrides"]
    assert "train.lr=0.001" in chosen["cholesky"]["overrides"] and chosen["cholesky"]["candidates"] == 2
    assert (tmp_path / "selected.csv").exists() and "test set was not used" in (tmp_path / "selection.md").read_text()


def test_tuned_compares_each_family_at_its_own_setting(tmp_path):
    """Families at different learning rates: plain, they fall into separate cells (no diag to compare with);
    --tuned names the setting in the variant and compares every family with diag."""
    for seed in (0, 1, 2):
        make_run(tmp_path / f"diag_s{seed}", "diag", 8, seed, -100.0 - seed, lr=3e-3)
        make_run(tmp_path / f"chol_s{seed}", "cholesky", 8, seed, -99.0 - seed, lr=1e-3)
    console = Console(file=io.StringIO(), width=200)
    plain = {row["variant"]: row for row in build_report(tmp_path, console=console)["groups"]}
    assert plain["cholesky"]["baseline"] is None
    tuned = {row["variant"]: row for row in build_report(tmp_path, console=console, tuned=True)["groups"]}
    assert set(tuned) == {"diag [train.lr=0.003]", "cholesky [train.lr=0.001]"}
    assert tuned["cholesky [train.lr=0.001]"]["gain"] == pytest.approx(1.0)
    assert "Tuned comparison" in (tmp_path / "report.md").read_text()
    # the verdict printed to the terminal keeps the "[...]" of the names (it is not rich markup)
    assert "cholesky [train.lr=0.001] better" in console.file.getvalue().replace("\n", " ")


# ---- the figures, read back from what the report saved --------------------------------------------
@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure the report writes, by file name, as it was when saved."""
    figures = {}
    save = plots.save_png

    def keep(fig, path):
        figures[Path(path).name] = fig
        save(fig, path)

    monkeypatch.setattr(plots, "save_png", keep)
    return figures


def test_gain_plot_shows_the_group_rows(sweep, tmp_path, saved_figures):
    root, _, _ = sweep
    result = build_report(root, tmp_path, console=Console(file=io.StringIO()))
    (ax,) = saved_figures["log_px_gain_vs_latent_dim.png"].axes  # one dataset
    rows = [row for row in result["groups"] if row["gain"] is not None]
    names = {series(row) for row in rows}
    assert names == {"cholesky", "lowrank(k=2)", "diag matched→cholesky"}
    lines = {line.get_label(): line for line in ax.lines if line.get_label() in names}
    assert set(lines) == names and [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
    assert any(list(line.get_ydata()) == [0, 0] for line in ax.lines)  # the zero line: diag itself
    bars = {}  # x of a bar -> (low, high, colour)
    for container in ax.containers:
        (vertical,) = container.lines[2]
        (colour,) = vertical.get_colors()  # one colour per series
        for segment in vertical.get_segments():
            bars[segment[0][0]] = (segment[0][1], segment[1][1], tuple(colour))
    for name, line in lines.items():
        points = sorted((row for row in rows if series(row) == name), key=lambda row: row["latent_dim"])
        assert list(line.get_ydata()) == pytest.approx([row["gain"] for row in points])
        # side by side at each latent_dim (log2 axis here), by less than a tenth of a doubling
        np.testing.assert_allclose(np.log2(line.get_xdata()), np.log2([row["latent_dim"] for row in points]), atol=0.1)
        for x, row in zip(line.get_xdata(), points):
            if row["gain_low"] is None:
                assert x not in bars  # no interval: a point without a bar
            else:
                low, high, colour = bars[x]
                assert (low, high) == pytest.approx((row["gain_low"], row["gain_high"]))
                assert colour == pytest.approx(matplotlib_rgba(line.get_color()))
    assert len(bars) == sum(row["gain_low"] is not None for row in rows)
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["2", "8"]


def matplotlib_rgba(colour):
    from matplotlib.colors import to_rgba

    return to_rgba(colour)


def rotated(degrees, major_sd, minor_sd):
    t = math.radians(degrees)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return r @ np.diag([major_sd ** 2, minor_sd ** 2]) @ r.T


def write_sample(folder, means, covariances, labels):
    """posterior_sample.pt as a finished run leaves it (finish.posterior_sample)."""
    torch.save({"means": torch.tensor(means), "covariances": torch.tensor(covariances), "labels": torch.tensor(labels)},
               folder / "posterior_sample.pt")


def test_posterior_picture_per_latent_size_draws_each_familys_saved_covariances(tmp_path, saved_figures):
    rng = np.random.default_rng(0)
    count, shown = 120, 50
    means, labels = rng.normal(size=(count, 2)), np.arange(count) % 10
    tilts = np.linspace(-80.0, 85.0, shown)  # the major axes' angles, in (-90, 90]
    major, minor = 1.0 + rng.random(shown), 0.1 + 0.3 * rng.random(shown)
    full = np.stack([rotated(t, a, b) for t, a, b in zip(tilts, major, minor)])
    variances = np.exp(rng.normal(-1.0, 0.5, (shown, 2)))
    for seed in (0, 1):
        make_run(tmp_path / f"diag_s{seed}", "diag", 2, seed, -150.0 - seed)
        make_run(tmp_path / f"chol_s{seed}", "cholesky", 2, seed, -149.0 - seed)
    # diag's run evaluated fewer test images: both panels show the 100 images both have
    write_sample(tmp_path / "diag_s0", means[:100], variances[:, :, None] * np.eye(2), labels[:100])
    write_sample(tmp_path / "chol_s0", means, full, labels)
    write_sample(tmp_path / "chol_s1", means + 5.0, np.tile(np.eye(2), (shown, 1, 1)), labels)  # not the first seed
    make_run(tmp_path / "diag_d8", "diag", 8, 0, -100.0)  # no sample saved: no picture for latent_dim 8
    build_report(tmp_path, console=Console(file=io.StringIO()))

    assert (tmp_path / "posterior_ellipses_d2.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "posterior_ellipses_d8.png").exists()
    assert "](posterior_ellipses_d2.png)" in (tmp_path / "report.md").read_text()
    diag_ax, chol_ax = saved_figures["posterior_ellipses_d2.png"].axes[:2]
    assert diag_ax.get_title().startswith("diag\n") and chol_ax.get_title().startswith("cholesky\n")
    for ax in (diag_ax, chol_ax):
        np.testing.assert_allclose(ax.collections[0].get_offsets(), means[:100])  # the latent plane itself
    geometry = {ax: np.array([(*p.center, p.width, p.height, p.angle) for p in ax.patches])
                for ax in (diag_ax, chol_ax)}
    drawn = geometry[chol_ax]
    np.testing.assert_allclose(drawn[:, :2], means[:shown], rtol=1e-12)
    np.testing.assert_allclose(drawn[:, 2:], np.column_stack([2 * major, 2 * minor, tilts]), rtol=1e-9, atol=1e-9)
    drawn = geometry[diag_ax]
    assert drawn[:, 4].tolist() == np.where(variances[:, 0] >= variances[:, 1], 0.0, 90.0).tolist()  # no tilt
    np.testing.assert_allclose(drawn[:, 2], 2 * np.sqrt(variances.max(1)), rtol=1e-12)


# ---- the console table -----------------------------------------------------------------------------
def assert_console_rows_are_one_line(console, groups, width=100):
    """Every line fits the width, and every group is one line, in order, with nothing cut (a line of its
    own may name the settings above their rows)."""
    lines = console.export_text(clear=False).splitlines()
    assert max(len(line) for line in lines) <= width
    rule = next(i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"─"})
    body = iter(lines[rule + 1:])
    setting = ""
    for row in groups:
        line = next(body)
        if row["setting"] != setting:
            assert line.split()[1:] == [row["setting"] + ":"]
            setting, line = row["setting"], next(body)
        latent_dim, rest = line.split(None, 1)
        assert latent_dim == str(row["latent_dim"]) and rest.startswith(row["variant"] + " ")
        assert rest[len(row["variant"]):].split()[0] == str(row["n"])
        assert gain_text(row) in line and "…" not in line
    assert next(body).strip().startswith("d: latent_dim")  # the caption, right after the last row


def test_console_table_fits_100_columns_and_report_md_keeps_every_column(sweep, tmp_path):
    root, _, _ = sweep
    console = Console(width=100, record=True, file=io.StringIO())
    result = build_report(root, tmp_path, console=console)
    assert_console_rows_are_one_line(console, result["groups"])
    text = console.export_text()
    # abbreviations explained under the tables
    assert "s/ep: seconds per epoch" in text and "[simultaneous interval]" in text and "δmin: smallest" in text
    header = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| dataset"))
    assert all(f" {name} |" in header for name in ("head", "params", "active", "logdet gap", "s/epoch"))
