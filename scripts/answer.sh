#!/usr/bin/env bash
# The published answer (README "The answer"; `make answer`): every family at the setting the tuning grid
# selected on validation data, latent_dim 2, 8 and 32, seeds 0, 1, 2, trained until the validation ELBO stops
# improving (experiment=answer: patience 3, at most 30 epochs), test log p(x) with its k-curve, equal-budget
# diag runs (encoder widened to cholesky's parameter count), the inference gaps of every seed-0 run on the same
# 200 test images, then the tuned report into $PUBLISH_DIR (report.md, summary.csv, gaps.csv, the plots).
#
# Usage: scripts/answer.sh [extra overrides]   environment: ANSWER_SCALE (cpu, the default, or full), ANSWER_DIR,
#                                             PUBLISH_DIR, ANSWER_SEEDS, ANSWER_DIMS, GAPS_IMAGES, ANSWER_JOBS
# ANSWER_SCALE=full is the GPU scale (experiment=answer_full: the default model, patience 10, at most 300 epochs,
# k=5000 on the whole test set; latent_dim 2, 8, 32 and 64, seeds 0-4, gaps of 1000 images); untested.
# Rerunning the same command finishes a run that was cut short: finished runs and measured gaps are skipped,
# runs with a checkpoint continue from it.
set -uo pipefail
VAE_COMPARE=${VAE_COMPARE:-vae-compare}
case ${ANSWER_SCALE:-cpu} in
    cpu)  PRESET=answer      SCALE_DIR=answer      SCALE_DIMS=2,8,32    SCALE_SEEDS=0,1,2     SCALE_GAPS=200 ;;
    full) PRESET=answer_full SCALE_DIR=answer_full SCALE_DIMS=2,8,32,64 SCALE_SEEDS=0,1,2,3,4 SCALE_GAPS=1000 ;;
    *) echo "error: ANSWER_SCALE must be cpu or full, not '$ANSWER_SCALE'" >&2; exit 2 ;;
esac
ANSWER_DIR=${ANSWER_DIR:-outputs/${SCALE_DIR}_runs}
PUBLISH_DIR=${PUBLISH_DIR:-outputs/$SCALE_DIR}
DIMS=${ANSWER_DIMS:-$SCALE_DIMS}
GAPS_IMAGES=${GAPS_IMAGES:-$SCALE_GAPS}
COMMON=("experiment=$PRESET" "seed=${ANSWER_SEEDS:-$SCALE_SEEDS}" hydra/launcher=joblib "hydra.launcher.n_jobs=${ANSWER_JOBS:-2}"
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
# Two runs start at latent_dim 4. The equal-budget diag: at latent_dim 2 cholesky's head has one output more than
# diag's (129 parameters, less than one hidden unit), so the widened encoder is diag's own and the run would repeat
# diag. lowrank with k = 4 needs latent_dim >= 4 (at latent_dim 2, cholesky is the full covariance with 5 outputs).
DIMS_FROM_4=$(tr , '\n' <<< "$DIMS" | awk '$1 >= 4' | paste -sd, -)
[ -n "$DIMS_FROM_4" ] && run "latent_dim=$DIMS_FROM_4" "${DIAG[@]}" model.match_params=cholesky
run "latent_dim=$DIMS" "${CHOLESKY[@]}"
run "latent_dim=$DIMS" "${CORR[@]}"
run "latent_dim=$DIMS" "${RANK1SUM[@]}"
[ -n "$DIMS_FROM_4" ] && run "latent_dim=$DIMS_FROM_4" "${LOWRANK[@]}"

# the gaps of every seed-0 run, on the same first GAPS_IMAGES test images
for config in $(grep -l "^seed: 0$" "$ANSWER_DIR"/*/.hydra/config.yaml); do
    folder=$(dirname "$(dirname "$config")")
    [ -f "$folder/summary.json" ] && { "$VAE_COMPARE" gaps "$folder" "gaps.images=$GAPS_IMAGES" || status=1; }
done
"$VAE_COMPARE" report "$ANSWER_DIR" --tuned --out "$PUBLISH_DIR" || status=1
exit $status
