"""The memory a run needs, estimated from its config before anything is built, against what the device has.

A model that cannot fit (model.hidden=[100000,100000]) is refused in one line instead of failing deep in an
allocation. Everything is float32 (4 bytes). The estimate is the sum of:
    state     weights, gradients and Adam's two moments: 4 floats per parameter (VAEConfig.parameter_counts)
    data      the training and test files on the device, and the binarized copies of the validation and
              test splits: (60000 + 10000 + 10000 + 10000) images x 784 floats
    the larger of the two passes, which never run at once:
    training  per image of a batch and per unit of every layer (input, encoder, head, latent, decoder,
              output): the layer's output and its activation kept for backward, and a gradient of each
              during backward, so 4 floats; and 8 latent_dim x latent_dim matrices (the full-covariance
              families keep up to 6 of them for backward, measured with saved-tensor hooks)
    evaluation 3 tensors as wide as the widest layer alive at once, for a validation batch (1000 images) and
              for an IWAE chunk (chunk x 100 images, see evaluate.default_chunk_size); and the posterior's d x d
              covariances in float64 for a diagnostics batch (covariance, correlation, its absolute value)
It leaves out the allocator's slack and the framework's own memory, so a run it lets through may still run
out on a crowded device (that is a one-line error too); a run it refuses cannot fit.
"""

import os

import torch

from vae_compare import UserError, evaluate
from vae_compare.model import IMAGE_SIZE, vae_config

FLOAT, DOUBLE = 4, 8
ADAM_FLOATS_PER_PARAMETER = 4  # weight, gradient, exp_avg, exp_avg_sq
TRAIN_FLOATS_PER_UNIT = 4
POSTERIOR_MATRICES = 8
EVAL_TENSORS = 3
EVAL_BATCH = 1000  # evaluate.elbo_terms, active_units and posterior_diagnostics batches
DATA_IMAGES = 60000 + 10000 + 10000 + 10000


def estimate(cfg, device_type) -> dict:
    """Bytes a run needs on its device, by part (see the module's docstring), with the parameter count."""
    config = vae_config(cfg)
    parameters = sum(config.parameter_counts())
    encoder = [IMAGE_SIZE, *config.encoder_hidden, config.head_size]
    decoder = [config.latent_dim, *config.decoder_hidden, IMAGE_SIZE]
    per_image = TRAIN_FLOATS_PER_UNIT * sum(encoder + decoder) + POSTERIOR_MATRICES * config.latent_dim ** 2
    training = cfg.train.batch_size * per_image * FLOAT
    evaluation = max(EVAL_TENSORS * EVAL_BATCH * max(encoder + decoder) * FLOAT,
                     EVAL_TENSORS * iwae_chunk_elements(max(decoder[1:]), cfg.eval.chunk_size, device_type) * FLOAT,
                     EVAL_TENSORS * EVAL_BATCH * config.latent_dim ** 2 * DOUBLE)
    return {"parameters": parameters,
            "state": ADAM_FLOATS_PER_PARAMETER * parameters * FLOAT,
            "data": DATA_IMAGES * IMAGE_SIZE * FLOAT,
            "training": training,
            "evaluation": evaluation}


def iwae_chunk_elements(widest, chunk_size, device_type):
    """Floats in the decoder's widest output for one IWAE chunk (samples x 100 images x widest): the budget
    of evaluate.default_chunk_size, or one sample's worth when that alone is larger."""
    per_sample = evaluate.IWAE_BATCH_SIZE * widest
    if chunk_size is not None:
        return chunk_size * per_sample
    budget = evaluate.DECODER_ELEMENT_BUDGET.get(device_type, evaluate.DECODER_ELEMENT_BUDGET["cpu"])
    return max(budget, per_sample)


def activations(parts):
    return max(parts["training"], parts["evaluation"])


def total(parts):
    return parts["state"] + parts["data"] + activations(parts)


def available_bytes(device) -> int:
    """Free memory on the device: the GPU's free memory, or the host's MemAvailable (what the kernel can
    hand out without swapping)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):  # not Linux, or a kernel before 3.14
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def size(count):
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 1e3:.0f} kB"


def check_fits(cfg, device, available=None):
    """Raise UserError, in one line, when the run cannot fit in the device's free memory."""
    parts = estimate(cfg, device.type)
    needed = total(parts)
    available = available_bytes(device) if available is None else available
    if needed > available:
        raise UserError(f"the model does not fit in memory: {parts['parameters']:,} parameters, a run needs about "
                        f"{size(needed)} (weights, gradients and Adam state {size(parts['state'])}, activations "
                        f"{size(activations(parts))}, data {size(parts['data'])}) but {device.type} has "
                        f"{size(available)} free; use a smaller model.hidden, latent_dim or train.batch_size")
