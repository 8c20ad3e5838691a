"""Files on disk: atomic writes (a crash leaves the old file or the new one,
never half of one) and sealed folders (the sha256 of every file, recorded when
the folder is written and checked when it is read back).

Temporary names are unique per call (``mkstemp``/``mkdtemp``): two processes
writing next to each other never share one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from synthfed.errors import InputError, IntegrityError, SynthfedError

CHECKSUM_FILE = "checksums.json"
_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """``mode`` is set before the file appears under its name (0600 for keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; ordinary output files are 0644
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def make_temp_dir(parent: Path, *, prefix: str, suffix: str) -> Path:
    """A new, uniquely named folder in ``parent`` with ordinary permissions
    (``mkdtemp`` makes 0700, and what is assembled in it is published as is)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


def refuse_non_empty(out_dir: Path) -> None:
    """An --out that exists and holds anything is refused: nothing of the user's is ever replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose a new --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; choose a new --out")


@contextmanager
def new_output_folder(out_dir: Path, *, command: str, what: str) -> Iterator[Path]:
    """Yield a unique temporary folder beside ``out_dir`` (``.<name>.<random>.partial``)
    to fill; on success it is renamed onto ``out_dir`` (missing or empty: one
    rename, nothing else replaced), on any failure removed. The output's lock
    is held throughout, so a crash never leaves a half-written ``what`` behind a
    valid-looking name and two commands never fill one folder."""
    from synthfed.locking import output_lock

    refuse_non_empty(out_dir)
    with output_lock(out_dir, command):
        refuse_non_empty(out_dir)  # again: another process may have filled it before we held the lock
        tmp = make_temp_dir(out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial")
        try:
            yield tmp
            os.replace(tmp, out_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SynthfedError(f"could not write the {what} into {out_dir} ({exc.strerror or exc}); "
                                "nothing was written there") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # ours: made above under a unique name
            raise


def _process_umask() -> int:
    # Read once, at import: setting the umask to read it is not thread-safe.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def publish_dir_atomic(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written directory into place with one rename. A directory of
    the same name (a previous attempt at the same round, which the caller owns)
    is moved aside under a unique name first and removed after."""
    if final_dir.exists():
        trash = make_temp_dir(final_dir.parent, prefix=f".{final_dir.name}.", suffix=".old")
        os.replace(final_dir, trash)  # onto the empty folder just made: allowed by rename(2)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash)
    else:
        os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


# -- sealed folders ----------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: Path) -> None:
    """Record the sha256 of every file under ``folder`` in ``folder/checksums.json``.
    Written last, once everything else in the folder is final; each file is
    fsynced on the way, so what the record describes is on disk before the
    folder is published."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == CHECKSUM_FILE:
            continue
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    write_json_atomic(folder / CHECKSUM_FILE, {"format": 1, "algorithm": "sha256", "files": files})


class Sealed:
    """Reads the files of a folder sealed by ``write_checksums``, refusing any
    that differs from its record. A folder without ``checksums.json`` (written
    before files were sealed, or a copy without one) is read unverified unless
    ``required``; ``hint`` ends every refusal with what the user can do."""

    def __init__(self, folder: Path, *, required: bool, hint: str):
        self.folder, self.hint = Path(folder), hint
        path = self.folder / CHECKSUM_FILE
        self.files: dict | None = None
        if path.is_file():
            try:
                record = json.loads(path.read_bytes())
                self.files = {str(k): str(v["sha256"]) for k, v in record["files"].items()}
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise IntegrityError(f"{path} is damaged ({_first_line(exc)}); {hint}") from exc
        elif required:
            raise IntegrityError(f"{path} is missing, so nothing in {self.folder} can be verified; {hint}")

    def recorded(self, rel: str) -> bool:
        return self.files is not None and rel in self.files

    def read_bytes(self, rel: str) -> bytes:
        path = self.folder / rel
        self._exists(rel)
        data = path.read_bytes()
        self._check(rel, hashlib.sha256(data).hexdigest())
        return data

    def verify(self, rel: str) -> None:
        """Check a file that another library will read from disk."""
        self._exists(rel)
        self._check(rel, sha256_file(self.folder / rel))

    def read_json(self, rel: str):
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InputError(f"{self.folder / rel} is not valid JSON ({_first_line(exc)}); {self.hint}") from exc

    def _exists(self, rel: str) -> None:
        if not (self.folder / rel).is_file():
            written = " (it was written with the folder)" if self.recorded(rel) else ""
            cls = IntegrityError if written else InputError
            raise cls(f"{self.folder / rel} is missing{written}; {self.hint}")

    def _check(self, rel: str, now: str) -> None:
        if self.files is None:
            return
        written = self.files.get(rel)
        if written is None:
            raise IntegrityError(f"{self.folder / rel} is not among the files recorded in "
                                 f"{self.folder / CHECKSUM_FILE}: it was added or replaced later; {self.hint}")
        if written != now:
            raise IntegrityError(f"{self.folder / rel} does not match its checksum (written {written[:12]}, now "
                                 f"{now[:12]}): the file is damaged; {self.hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
