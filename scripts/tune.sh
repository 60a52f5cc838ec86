#!/usr/bin/env bash
# The tuning grid of the fair comparison (README "Tuning on validation data"): every family gets the same grid,
# selected by validation ELBO only (eval.on_test=false: the test set is not read), then
# `vae-compare report --select` writes each family's selected setting to $TUNE_DIR/selection.md, and each
# selection is run on the test set over CONFIRM_SEEDS into $CONFIRM_DIR, compared by `vae-compare report --tuned`.
#
#   learning rate        3e-4, 1e-3, 3e-3                                   every family
#   scale transform      exp (scale_floor 0) and softplus (scale_floor 1e-3)  families with a diagonal part
#   offdiag_scale        1, 0.1, 0.01, 0.001                                 cholesky, lowrank, corr, rank1sum
#   lowrank's start      zero and random (offdiag_init_std 0.1)              lowrank
#
# Usage: scripts/tune.sh [extra overrides]
#   environment: TUNE_DIR, TUNE_SEEDS, TUNE_LATENT_DIM, TUNE_JOBS, CONFIRM_DIR, CONFIRM_SEEDS
# A setting that diverges (the NaN guard stops it, failed.txt names it) is a result, not an error: the grid goes
# on, and --select chooses among the finished runs. Rerunning skips the finished runs. Defaults: quick preset, latent_dim 16, seed 0, 2 parallel jobs (114 runs,
# about 25 minutes on a 2-core CPU).
set -uo pipefail
VAE_COMPARE=${VAE_COMPARE:-vae-compare}
TUNE_DIR=${TUNE_DIR:-outputs/tune}
COMMON=(experiment=quick "latent_dim=${TUNE_LATENT_DIM:-16}" "seed=${TUNE_SEEDS:-0}" eval.on_test=false
        train.threads=1 hydra/launcher=joblib "hydra.launcher.n_jobs=${TUNE_JOBS:-2}" "hydra.sweep.dir=$TUNE_DIR"
        train.lr=3e-4,1e-3,3e-3 "$@")
EXP=(family.scale_transform=exp family.scale_floor=0)
SOFTPLUS=(family.scale_transform=softplus family.scale_floor=1e-3)
OFFDIAG=family.offdiag_scale=1,0.1,0.01,0.001

for transform in EXP SOFTPLUS; do
    declare -n scale="$transform"
    "$VAE_COMPARE" train -m family=diag "${scale[@]}" "${COMMON[@]}"
    "$VAE_COMPARE" train -m family=cholesky,corr "${scale[@]}" "$OFFDIAG" "${COMMON[@]}"
    "$VAE_COMPARE" train -m family=lowrank "${scale[@]}" "$OFFDIAG" family.offdiag_init=zero family.offdiag_init_std=0 "${COMMON[@]}"
    "$VAE_COMPARE" train -m family=lowrank "${scale[@]}" "$OFFDIAG" family.offdiag_init=random family.offdiag_init_std=0.1 "${COMMON[@]}"
done
# rank1sum has no diagonal part: no scale transform to choose
"$VAE_COMPARE" train -m family=rank1sum "$OFFDIAG" "${COMMON[@]}"
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
