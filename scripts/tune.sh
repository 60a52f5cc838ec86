#!/usr/bin/env bash
# The tuning grid of the fair comparison (README "Tuning on validation data"): every family gets the learning rates
# 3e-4, 1e-3 and 3e-3 times its own grid, selected by validation ELBO only (eval.on_test=false: the test set is not
# read), then `vae-compare report --select` writes each family's selected setting to $TUNE_DIR/selection.md, and
# each selection is run on the test set over CONFIRM_SEEDS into $CONFIRM_DIR, compared by `vae-compare report --tuned`.
#
# Each family declares its grid (tuning_grid in vae_compare/posteriors): the scale transform, exp (scale_floor 0)
# or softplus (scale_floor 1e-3), where it has a diagonal part; offdiag_scale 1, 0.1, 0.01, 0.001 where it has an
# off-diagonal part or a factor; lowrank's start, zero or random (offdiag_init_std 0.1).
# `python -m vae_compare.posteriors tune` prints the sweeps, one `train -m` call per line.
#
# Usage: scripts/tune.sh [extra overrides]
#   environment: TUNE_DIR, TUNE_SEEDS, TUNE_LATENT_DIM, TUNE_JOBS, CONFIRM_DIR, CONFIRM_SEEDS,
#                PYTHON (default: the python beside $VAE_COMPARE)
# A setting that diverges (the NaN guard stops it, failed.txt names it) is a result, not an error: the grid goes
# on, and --select chooses among the finished runs. Rerunning skips the finished runs. Defaults: quick preset,
# latent_dim 16, seed 0, 2 parallel jobs (the grid measured in docs/tuning.md, five families: 114 runs, about 25
# minutes on a 2-core CPU).
set -uo pipefail
VAE_COMPARE=${VAE_COMPARE:-vae-compare}
# the Python that runs vae-compare (the one beside it, in its environment), for the family registry
PYTHON=${PYTHON:-$(dirname "$(command -v "$VAE_COMPARE")")/python}
[ -x "$PYTHON" ] || PYTHON=python3
TUNE_DIR=${TUNE_DIR:-outputs/tune}
COMMON=(experiment=quick "latent_dim=${TUNE_LATENT_DIM:-16}" "seed=${TUNE_SEEDS:-0}" eval.on_test=false
        train.threads=1 hydra/launcher=joblib "hydra.launcher.n_jobs=${TUNE_JOBS:-2}" "hydra.sweep.dir=$TUNE_DIR"
        train.lr=3e-4,1e-3,3e-3 "$@")
SWEEPS=$("$PYTHON" -m vae_compare.posteriors tune) || exit 2
mapfile -t SWEEPS <<< "$SWEEPS"

for sweep in "${SWEEPS[@]}"; do
    # shellcheck disable=SC2086  # the overrides are words
    "$VAE_COMPARE" train -m $sweep "${COMMON[@]}"
done
"$VAE_COMPARE" report "$TUNE_DIR" --select || exit
failed=$(find "$TUNE_DIR" -name failed.txt | wc -l)
echo "tune: $failed setting(s) failed (see their failed.txt): not selectable"

# Confirm: each family's selected setting on the test set over CONFIRM_SEEDS, then the tuned report (each
# family at its own setting, compared with diag at diag's).
# beside the grid, not in it: a rerun selects from the grid alone
CONFIRM_DIR=${CONFIRM_DIR:-${TUNE_DIR}_confirm}
python3 -c 'import csv, sys; [print(row["overrides"]) for row in csv.DictReader(open(sys.argv[1]))]' \
    "$TUNE_DIR/selected.csv" | while read -r selected; do
    # shellcheck disable=SC2086  # the overrides are words
    "$VAE_COMPARE" train -m $selected experiment=quick "latent_dim=${TUNE_LATENT_DIM:-16}" \
        "seed=${CONFIRM_SEEDS:-0,1,2}" train.threads=1 hydra/launcher=joblib "hydra.launcher.n_jobs=${TUNE_JOBS:-2}" \
        "hydra.sweep.dir=$CONFIRM_DIR" "$@"
done
"$VAE_COMPARE" report "$CONFIRM_DIR" --tuned
