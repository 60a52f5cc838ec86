"""Where and how fast the arithmetic runs: the device, torch's threads, denormal floats, clocks.

Nothing here changes a result: these are the runtime keys' concerns (device, train.threads) and the timing of
stages, kept apart from the math and from the run-folder files.
"""

import os
import time

import torch

from vae_compare import UserError

# torch's own thread count when this module is first imported, before any job sets its own: the basic launcher
# runs every job of a sweep in one process, so each job sets its count afresh from this default.
DEFAULT_THREADS = torch.get_num_threads()


def flush_denormals():
    """Flush float32 denormals (nonzero magnitudes below 1.2e-38) to zero in CPU arithmetic.

    Adam's first moments for weights fed by MNIST's rarely-lit edge pixels decay through the denormal range
    after each rare gradient, and denormal arithmetic is many times slower on x86: a batch-20 run slowed by
    1.2-1.4x after a few thousand steps (docs/speed.md). Results change only where a value would fall below
    1.2e-38. The setting is per thread and OpenMP's worker threads copy it when they start, so this must run
    before the first parallel torch operation of the process (the CLI calls it first thing)."""
    torch.set_flush_denormal(True)


def pick_device(name):
    """The torch device of the config's `device` key (auto: cuda when available, else cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)


def joblib_workers(launcher):
    """Worker processes of Hydra's joblib launcher config (its n_jobs, counted as joblib counts a negative
    one: -1 is every core), or None for any other launcher."""
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    cores = os.cpu_count() or 1
    return launcher.n_jobs if launcher.n_jobs > 0 else cores + 1 + launcher.n_jobs


def job_threads(threads, launcher):
    """torch threads for one job: train.threads when set; under the joblib launcher cores / workers, so that
    parallel jobs do not oversubscribe the cores; else torch's default."""
    if threads is not None:
        return threads
    workers = joblib_workers(launcher)
    if workers is None:
        return DEFAULT_THREADS
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def synchronize(device):
    """Wait for the device's queued work (a no-op on the CPU), so that a clock read after it bills that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds since the last lap; on a GPU it waits for queued work, so each stage is billed its own time."""

    def __init__(self, device):
        self.device = device
        self.last = self.now()

    def now(self):
        synchronize(self.device)
        return time.perf_counter()

    def lap(self):
        previous, self.last = self.last, self.now()
        return self.last - previous
