"""The loop shared by the commands that measure finished runs one at a time (gaps, calibrate): every finished run
at or below a folder, skipping those whose result file holds the same settings, each measured under its lock with
progress bars, and a count of the unfinished runs left out."""

from pathlib import Path

from rich.progress import Progress

from vae_compare import lock, rundir
from vae_compare.progress import ProgressBars


def measure_runs_below(folder, result_file, settings, measure, show, console):
    """[measure(run folder, progress) or the stored result] for every finished run at or below folder.

    result_file: the JSON a run's measurement is written to (its "settings" compared with `settings`);
    show(result): prints one fresh result."""
    runs, unfinished = rundir.finished_runs_below(folder)
    results = []
    for index, run in enumerate(runs, 1):
        existing = rundir.read_json(Path(run["folder"]) / result_file)
        if existing is not None and existing.get("settings") == settings:
            console.print(f"[{index}/{len(runs)}] {run['folder']}: measured already ({result_file})")
            results.append(existing)
            continue
        console.print(f"[{index}/{len(runs)}] {run['folder']}")
        with lock.hold(run["folder"]), Progress(console=console, transient=True) as progress:
            result = measure(run["folder"], ProgressBars(progress))
        show(result)
        results.append(result)
    if unfinished:
        console.print(f"{unfinished} unfinished run(s) below {folder} left out")
    return results
