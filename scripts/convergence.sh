#!/usr/bin/env bash
# The training budget's measurement (issue 26, docs/convergence.md): diag and cholesky at latent_dim 8 on the
# answer's model, trained far past the point where validation ELBO stops improving, so that any patience and
# cap can be read back from each run's metrics.csv (scripts/convergence.py).
#   plateau:  lr 1e-3 halved after 5 epochs without a better validation ELBO, stop after 20, cap 300; seeds 0-3
#   constant: lr 1e-3 throughout, no early stop, cap 200; seed 0 (what the schedule buys)
# Rerunning skips finished runs and continues cut ones from their checkpoints.
# Usage: scripts/convergence.sh [extra overrides]   environment: CONVERGENCE_DIR, CONVERGENCE_JOBS
set -uo pipefail
VAE_COMPARE=${VAE_COMPARE:-vae-compare}
DIR=${CONVERGENCE_DIR:-outputs/convergence_runs}
COMMON=(experiment=answer family=diag,cholesky latent_dim=8 train.lr=1e-3 train.threads=1 hydra/launcher=joblib
        "hydra.launcher.n_jobs=${CONVERGENCE_JOBS:-2}")
status=0
"$VAE_COMPARE" train -m "${COMMON[@]}" seed=0,1,2,3 train.lr_schedule=plateau train.lr_decay=0.5 \
    train.lr_decay_patience=5 train.patience=20 train.epochs=300 "hydra.sweep.dir=$DIR/plateau" "$@" || status=1
"$VAE_COMPARE" train -m "${COMMON[@]}" seed=0 train.lr_schedule=constant train.patience=null train.epochs=200 \
    "hydra.sweep.dir=$DIR/constant" "$@" || status=1
exit $status
