"""One owner per run or output directory.

A command that writes a directory holds an exclusive ``flock`` on a lock file
for as long as it writes: ``<run>/.lock`` for a run directory, and
``<parent>/.<name>.lock`` for an output folder that does not exist yet. The
file holds the owner's PID and command, so a second process can say who is in
the way. The kernel drops the lock when its holder exits, however it exits
(SIGKILL included): a stale lock file never blocks anyone, it is simply
taken over. Not for network file systems whose ``flock`` is local only."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from synthfed.errors import RunLocked

RUN_LOCK_FILE = ".lock"


@contextmanager
def run_lock(run_dir: str | Path, command: str = "synthfed train") -> Iterator[Path]:
    """Own ``run_dir`` (made if missing) for the duration; ``RunLocked`` at once
    if another process owns it. A run directory this call made and nothing
    filled is removed again (rmdir: only when empty)."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with hold(run_dir / RUN_LOCK_FILE, subject=run_dir, command=command):
            yield run_dir
    finally:
        if created:
            _remove_if_empty(run_dir)


@contextmanager
def output_lock(out_dir: str | Path, command: str = "synthfed generate") -> Iterator[Path]:
    """Own the output folder ``out_dir`` (which need not exist yet: the lock
    file sits next to it, in its parent) for the duration."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with hold(out_dir.parent / f".{out_dir.name}.lock", subject=out_dir, command=command):
        yield out_dir


@contextmanager
def hold(lock_path: Path, *, subject: Path, command: str) -> Iterator[None]:
    fd = _acquire(lock_path, subject)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{command}\n".encode())
        yield
    finally:
        # Unlink while still holding the lock: a process that opened the old
        # file meanwhile sees, once it gets the lock, that the path no longer
        # names it, and starts again on a fresh file (see _acquire).
        try:
            if _same_file(lock_path, fd):
                os.unlink(lock_path)
        finally:
            os.close(fd)


def _acquire(lock_path: Path, subject: Path) -> int:
    for _ in range(100):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(_in_use(lock_path, subject)) from None
        if _same_file(lock_path, fd):
            return fd
        os.close(fd)  # its owner unlinked it between our open and our flock: try the new one
    raise RunLocked(f"{subject} is changing hands too fast to be locked; try again")


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _in_use(lock_path: Path, subject: Path) -> str:
    # The holder writes its PID just after it gets the lock: allow it a moment.
    owner = ""
    for _ in range(20):
        try:
            owner = lock_path.read_text()
        except OSError:
            owner = ""
        if owner.strip():
            break
        time.sleep(0.05)
    lines = owner.split("\n")
    pid = lines[0].strip() or "unknown"
    command = lines[1].strip() if len(lines) > 1 and lines[1].strip() else "synthfed"
    return f"{subject} is in use by process {pid} ({command}); wait for it or choose another --out"


def lock_holder(lock_path: Path) -> int | None:
    """The PID written in ``lock_path`` (None when absent or not yet written);
    says who wrote it, not whether it still holds it."""
    try:
        first = Path(lock_path).read_text().split("\n")[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (or already gone): it is no longer ours to remove
