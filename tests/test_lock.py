"""The run-folder lock: exclusive between processes, named by its holder, released when the holder dies
however it dies, re-entrant within one process, and invisible to the report."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from vae_compare import UserError
from vae_compare.lock import LOCK_FILE, Locked, check_free, hold, take
from vae_compare.report import build_report
from vae_compare.rundir import find_runs

HOLDER = f"pid {os.getpid()} on host {socket.gethostname()}"

# Another process holding the lock the way any vae-compare holds it: flock on FOLDER/.lock, "PID HOST" inside.
OTHER_HOLDER = """
import fcntl, os, socket, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.truncate(0); f.write(f"{os.getpid()} {socket.gethostname()}\\n"); f.flush()
print("held", flush=True)
time.sleep(60)
"""


def test_a_held_folder_is_refused_naming_its_holder(tmp_path):
    folder = tmp_path / "run"
    with hold(folder):
        assert (folder / LOCK_FILE).read_text().split() == [str(os.getpid()), socket.gethostname()]
        with hold(tmp_path / "." / "run"):  # the same folder, spelt otherwise: a nested hold is a no-op
            pass
        with pytest.raises(Locked, match=HOLDER):  # a second descriptor conflicts, even in this process
            take(folder / LOCK_FILE)
    with hold(folder):  # released at the end of the block
        pass
    assert (folder / LOCK_FILE).read_text() == ""  # a free lock names no holder


def test_another_process_holds_it_until_killed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    other = subprocess.Popen([sys.executable, "-c", OTHER_HOLDER, str(folder / LOCK_FILE)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        for attempt in (lambda: hold(folder).__enter__(), lambda: check_free(folder)):
            with pytest.raises(Locked) as error:
                attempt()
            assert f"pid {other.pid} on host {socket.gethostname()}" in str(error.value)
            assert isinstance(error.value, UserError) and "\n" not in str(error.value)
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    with hold(folder):  # a killed holder leaves no stale lock
        pass


def test_check_free_makes_nothing(tmp_path):
    check_free(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_lock_file_does_not_make_a_run(tmp_path):
    with hold(tmp_path / "sweep" / "job"):
        pass
    assert find_runs(tmp_path / "sweep") == ([], 0)
    with pytest.raises(UserError, match="no finished runs") as error:
        build_report(tmp_path / "sweep")
    assert "unfinished" not in str(error.value)
