"""Hydra callback for sweeps: collect failed jobs and summarize the sweep folder when it ends.

Runs in the launching process whatever the launcher (basic, joblib, submitit), so failures recorded
by jobs in other processes are found through their failed.txt files.
"""

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

from vae_compare import UserError
from vae_compare.export import FAILED_FILE
from vae_compare.report import build_report

log = logging.getLogger(__name__)
FAILED_JOBS = []


class SweepCallback(Callback):
    def on_multirun_start(self, config, **kwargs):
        FAILED_JOBS.clear()

    def on_multirun_end(self, config, **kwargs):
        sweep_dir = Path(config.hydra.sweep.dir)
        FAILED_JOBS.extend(path.read_text().strip() for path in sorted(sweep_dir.glob(f"*/{FAILED_FILE}")))
        try:
            build_report(sweep_dir)
        except UserError as error:  # no finished job, or an unwritable folder: the jobs' results stand
            log.error("no sweep report: %s", error)
