#!/usr/bin/env bash
# The published answer (README "The answer"; `make answer`): every family that declares answer runs
# (vae_compare/posteriors), at the setting the tuning grid selected on validation data, latent_dim 2, 8 and 32,
# seeds 0, 1, 2, trained until the validation ELBO stops improving (experiment=answer: patience 3, at most 30
# epochs), test log p(x) with its k-curve, equal-budget diag runs (encoder widened to cholesky's parameter count),
# the inference gaps of every seed-0 run on the same 200 test images, then the tuned report into $PUBLISH_DIR
# (report.md, summary.csv, gaps.csv, the plots).
#
# Usage: scripts/answer.sh [extra overrides]   environment: ANSWER_SCALE (cpu, the default, or full), ANSWER_DIR,
#                                             PUBLISH_DIR, ANSWER_SEEDS, ANSWER_DIMS, GAPS_IMAGES, GAPS_OPTIONS
#                                             (more gaps.<key>=value overrides), ANSWER_JOBS,
#                                             PYTHON (default: the python beside $VAE_COMPARE)
# ANSWER_SCALE=full is the GPU scale (experiment=answer_full: the default model, patience 10, at most 300 epochs,
# k=5000 on the whole test set; latent_dim 2, 8, 32 and 64, seeds 0-4, gaps of 1000 images); untested.
# Rerunning the same command finishes a run that was cut short: finished runs and measured gaps are skipped,
# runs with a checkpoint continue from it.
set -uo pipefail
VAE_COMPARE=${VAE_COMPARE:-vae-compare}
# the Python that runs vae-compare (the one beside it, in its environment), for the family registry
PYTHON=${PYTHON:-$(dirname "$(command -v "$VAE_COMPARE")")/python}
[ -x "$PYTHON" ] || PYTHON=python3
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

# The runs, from the family registry (each family's answer_runs: its setting selected by the tuning grid on
# validation data, quick preset, latent_dim 16, seed 0; the equal-budget diag and lowrank start at latent_dim 4),
# one `train -m` call per line: `python -m vae_compare.posteriors answer "$DIMS"` prints them.
SWEEPS=$("$PYTHON" -m vae_compare.posteriors answer "$DIMS") || exit 2
mapfile -t SWEEPS <<< "$SWEEPS"

status=0
for sweep in "${SWEEPS[@]}"; do
    # shellcheck disable=SC2086  # the overrides are words
    "$VAE_COMPARE" train -m $sweep "${COMMON[@]}" || status=1
done

# the gaps of every seed-0 run, on the same first GAPS_IMAGES test images
for config in $(grep -l "^seed: 0$" "$ANSWER_DIR"/*/.hydra/config.yaml); do
    folder=$(dirname "$(dirname "$config")")
    # shellcheck disable=SC2086  # GAPS_OPTIONS: more gaps.<key>=value words
    [ -f "$folder/summary.json" ] && { "$VAE_COMPARE" gaps "$folder" "gaps.images=$GAPS_IMAGES" ${GAPS_OPTIONS:-} || status=1; }
done
"$VAE_COMPARE" report "$ANSWER_DIR" --tuned --out "$PUBLISH_DIR" || status=1
exit $status
