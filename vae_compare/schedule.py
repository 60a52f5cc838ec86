"""The learning-rate schedule of an epoch and the early-stopping rule, both replayed from the validation ELBOs
of the epochs before: they keep no state, so a resumed run continues them exactly."""

import math

# Burda et al. (2016): stage i = 0..7 lasts 3^i epochs at learning rate lr * round(10^(1 - i/7), 1) / 10 (their
# code: 1e-4 * round(10^(1 - (i-1)/7), 1) for i = 1..8, i.e. 1e-3, 7.2e-4, 5.2e-4, ..., 1.4e-4, 1e-4).
BURDA_STAGES = 8


def burda_rate(lr, stage):
    return lr * round(10 ** (1 - stage / 7), 1) / 10



def learning_rate(train_cfg, epoch, val_elbos=()):
    """Learning rate of an epoch (0-based); the Burda schedule's stages are scaled to train.epochs. The plateau
    schedule replays the validation ELBOs of the epochs before (`val_elbos`), so it needs no state of its own."""
    if train_cfg.lr_schedule == "constant":
        return train_cfg.lr
    if train_cfg.lr_schedule == "plateau":
        return plateau_rate(train_cfg, val_elbos[:epoch])
    total = sum(3 ** i for i in range(BURDA_STAGES))
    stage_end = 0
    for stage in range(BURDA_STAGES):
        stage_end += 3 ** stage
        if epoch < round(stage_end * train_cfg.epochs / total):
            return burda_rate(train_cfg.lr, stage)
    return burda_rate(train_cfg.lr, BURDA_STAGES - 1)


def plateau_rate(train_cfg, val_elbos):
    rate, best, since = train_cfg.lr, -math.inf, 0
    for elbo in val_elbos:
        best, since = (elbo, 0) if elbo > best else (best, since + 1)
        if since >= train_cfg.lr_decay_patience:
            rate, since = rate * train_cfg.lr_decay, 0
    return rate


def stops_early(train_cfg, val_elbos):
    """Early stopping after the epochs whose validation ELBOs are `val_elbos`: train.patience epochs since the best
    (never with patience null), or the plateau schedule's next rate below train.lr_min (at a vanishing rate, gains
    of a thousandth of a nat would otherwise keep resetting the patience)."""
    if not val_elbos:
        return False
    if train_cfg.lr_schedule == "plateau" and train_cfg.lr_min is not None:
        if plateau_rate(train_cfg, val_elbos) < train_cfg.lr_min:
            return True
    best_epoch = max(range(len(val_elbos)), key=lambda i: (val_elbos[i], -i)) + 1
    return train_cfg.patience is not None and len(val_elbos) - best_epoch >= train_cfg.patience
