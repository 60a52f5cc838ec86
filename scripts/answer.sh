#!/usr/bin/env bash
# The published answer (README "The answer"; `make answer`): every family at the setting the tuning grid
# selected on validation data, latent_dim 2, 8 and 32, seeds 0, 1, 2, trained until the validation ELBO stops
# improving (experiment=answer: patience 3, at most 30 epochs), test log p(x) with its k-curve, equal-budget
# diag runs (encoder widened to cholesky's parameter count), the inference gaps of every seed-0 run on the same
# 200 test images, then the tuned report into $PUBLISH_DIR (report.md, summary.csv, gaps.csv, the plots).
#
# Usage: scripts/answer.sh [extra overrides]   environment: ANSWER_DIR, PUBLISH_DIR, ANSWER_SEEDS, ANSWER_DIMS,
#                                             GAPS_IMAGES, ANSWER_JOBS
# Rerunning the same command finishes a run that was cut short: finished runs and measured gaps are skipped,
# runs with a checkpoint continue from it.
set -uo pipefail
VAE_COMPARE=${VAE_COMPARE:-vae-compare}
ANSWER_DIR=${ANSWER_DIR:-outputs/answer_runs}
PUBLISH_DIR=${PUBLISH_DIR:-outputs/answer}
DIMS=${ANSWER_DIMS:-2,8,32}
COMMON=(experiment=answer "seed=${ANSWER_SEEDS:-0,1,2}" hydra/launcher=joblib "hydra.launcher.n_jobs=${ANSWER_JOBS:-2}"
        "hydra.sweep.dir=$ANSWER_DIR" "$@")

# Each family's selected setting (README "Tuning on validation data": quick preset, latent_dim 16, seed 0).
DIAG=(family=diag family.scale_transform=softplus family.scale_floor=1e-3 train.lr=3e-3)
CHOLESKY=(family=cholesky family.scale_transform=softplus family.scale_floor=1e-3 family.offdiag_scale=0.001 train.lr=3e-3)
LOWRANK=(family=lowrank family.scale_transform=softplus family.scale_floor=1e-3 family.offdiag_init=random
         family.offdiag_init_std=0.1 family.offdiag_scale=0.001 train.lr=3e-3)
CORR=(family=corr family.scale_transform=exp family.scale_floor=0 family.offdiag_scale=0.001 train.lr=3e-3)
RANK1SUM=(family=rank1sum family.offdiag_scale=0.1 train.lr=1e-3)

status=0
run() { "$VAE_COMPARE" train -m "$@" "${COMMON[@]}" || status=1; }
run "latent_dim=$DIMS" "${DIAG[@]}"
run "latent_dim=$DIMS" "${DIAG[@]}" model.match_params=cholesky
run "latent_dim=$DIMS" "${CHOLESKY[@]}"
run "latent_dim=$DIMS" "${CORR[@]}"
run "latent_dim=$DIMS" "${RANK1SUM[@]}"
# lowrank with k = 4 needs latent_dim >= 4 (at latent_dim 2, cholesky is the full covariance with 5 outputs)
LOWRANK_DIMS=$(tr , '\n' <<< "$DIMS" | awk '$1 >= 4' | paste -sd, -)
[ -n "$LOWRANK_DIMS" ] && run "latent_dim=$LOWRANK_DIMS" "${LOWRANK[@]}"

# the gaps of every seed-0 run, on the same first GAPS_IMAGES test images
for config in $(grep -l "^seed: 0$" "$ANSWER_DIR"/*/.hydra/config.yaml); do
    folder=$(dirname "$(dirname "$config")")
    [ -f "$folder/summary.json" ] && { "$VAE_COMPARE" gaps "$folder" "gaps.images=${GAPS_IMAGES:-200}" || status=1; }
done
"$VAE_COMPARE" report "$ANSWER_DIR" --tuned --out "$PUBLISH_DIR" || status=1
exit $status
