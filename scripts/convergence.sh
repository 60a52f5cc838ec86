#!/usr/bin/env bash
# The training budget's measurement (issue 26, docs/convergence.md): diag and cholesky at latent_dim 8 on the
# answer's model, seeds 0-3, lr 1e-3 halved after 5 epochs without a better validation ELBO (train.lr_schedule=
# plateau), stopped when the rate falls below 1e-5 (seven halvings) or after 20 epochs without a better validation
# ELBO, capped at 300. scripts/convergence.py reads the curves back from each run's metrics.csv and shows what any
# shorter patience or higher rate floor would have given (the trajectory up to an earlier stop is the same).
# Rerunning skips finished runs and continues cut ones from their checkpoints.
# Usage: scripts/convergence.sh [extra overrides]   environment: CONVERGENCE_DIR, CONVERGENCE_JOBS
set -uo pipefail
VAE_COMPARE=${VAE_COMPARE:-vae-compare}
DIR=${CONVERGENCE_DIR:-outputs/convergence_runs}
"$VAE_COMPARE" train -m experiment=answer family=diag,cholesky latent_dim=8 seed=0,1,2,3 train.lr=1e-3 \
    train.lr_schedule=plateau train.lr_decay=0.5 train.lr_decay_patience=5 train.lr_min=1e-5 train.patience=20 \
    train.epochs=300 train.threads=1 hydra/launcher=joblib "hydra.launcher.n_jobs=${CONVERGENCE_JOBS:-2}" \
    "hydra.sweep.dir=$DIR/plateau" "$@"
