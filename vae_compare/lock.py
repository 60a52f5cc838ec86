"""One process at a time per run folder: an exclusive flock on FOLDER/.lock, held for the run's whole life.

The OS drops a flock when its process dies, however it dies, so a killed run never leaves a stale lock.
The file itself stays between runs (it is not a result file, and the report does not count it as one);
while the lock is held it names its holder ("PID HOST"), so that a refused process can say who has the
folder. On Linux, flock on NFS is emulated with POSIX locks (kernel 2.6.12 and later) and works where the
server runs a lock manager; a file system that ignores locks lets two processes in, as before.
"""

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from vae_compare import UserError

LOCK_FILE = ".lock"
# Folders this process holds, as (device, inode): however a path spells the folder. A nested hold (the CLI's
# around a whole single run, then the job's own) must be a no-op: a second flock through a new descriptor
# would conflict with this process's own lock.
HELD = set()


class Locked(UserError):
    """The folder is held by another process; `holder` names it ("pid 123 on host a")."""

    def __init__(self, folder, holder):
        super().__init__(f"{folder} is in use by another vae-compare process ({holder}); "
                         "wait for it to finish or use another folder")
        self.holder = holder


def holder_of(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    fields = os.read(fd, 300).decode(errors="replace").split()
    if len(fields) < 2:  # the holder writes its name just after it takes the lock
        return "holder unknown"
    return f"pid {fields[0]} on host {fields[1]}"


def lock_error(path, error):
    if error.errno == errno.ENOLCK:  # NFS without a lock manager
        return UserError(f"cannot lock {path}: the file system offers no locks (on NFS, run the lock manager)")
    return UserError(f"cannot lock {path}: {error.strerror or error}")


def take(path: Path):
    """An open descriptor of path holding its exclusive lock; Locked if another process holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise lock_error(path, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = holder_of(fd) if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            raise (Locked(path.parent, holder) if holder else lock_error(path, error)) from None
        # a failed run removes its folder's files, the lock file last: if that happened after we opened it,
        # we hold a file nobody else will open, so start again on the one now at that path
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def identity(folder):
    stat = os.stat(folder)
    return stat.st_dev, stat.st_ino


@contextmanager
def hold(folder):
    """Hold folder's lock for the duration (making the folder if needed); Locked if another process has it."""
    folder = Path(folder).expanduser().absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = identity(folder)
    except OSError as error:
        raise UserError(f"output folder {folder} is not writable: {error.strerror or error}") from None
    if key in HELD:
        yield
        return
    fd = take(folder / LOCK_FILE)
    HELD.add(key)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        HELD.discard(key)
        try:
            os.ftruncate(fd, 0)  # the file outlives the lock: an empty one names no holder
        except OSError:
            pass
        os.close(fd)  # closing the only descriptor releases the lock


def check_free(folder):
    """Raise Locked if another process holds folder's lock; makes nothing (a check before any job starts)."""
    path = Path(folder).expanduser().absolute() / LOCK_FILE
    if path.exists():
        with hold(path.parent):
            pass
