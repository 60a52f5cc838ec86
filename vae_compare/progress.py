"""The estimators' progress callback, progress(stage, done, total), drawn as rich progress bars."""


class ProgressBars:
    """progress(stage, done, total) as one bar per stage of a rich Progress."""

    def __init__(self, progress):
        self.progress, self.tasks = progress, {}

    def __call__(self, stage, done, total):
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done)
