"""Opening a run directory: the one path every engine takes to start or resume.

A new run writes its ``run.json`` (``synthfed.run_info.RunInfo``); a directory
that already holds rounds is refused unless resuming, and then the saved
``RunInfo`` is checked (same data, or same settings) before the latest round
(``synthfed.checkpoint``) is handed back to continue from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from synthfed.checkpoint import latest_round_dir
from synthfed.run_info import RunInfo

if TYPE_CHECKING:
    from synthfed.data import FederatedData


def open_run_dir(run_dir: Path, info: RunInfo, *, resume: bool, check: Callable[[RunInfo], None],
                 resume_flag: str = "--resume") -> Path | None:
    """The one way an engine opens its run directory. A new run writes
    ``info``; a run directory that holds rounds is refused unless ``resume``,
    then ``check`` vets the saved ``RunInfo`` (same data, same settings) and
    the latest round is returned to continue from (None: start at round 1)."""
    run_dir = Path(run_dir)
    latest = latest_round_dir(run_dir) if run_dir.exists() else None
    if latest is not None and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass {resume_flag} to continue it or choose another --out")
    if latest is not None:
        check(RunInfo.read(run_dir))
        return latest
    run_dir.mkdir(parents=True, exist_ok=True)
    info.write(run_dir)
    return None


def open_in_process_run(run_dir: Path, *, resume: bool, config: dict, spec: dict, fed: "FederatedData",
                        **parts) -> Path | None:
    """``open_run_dir`` for a run whose clients' data is in this process: a
    resumed run must see the data it started with."""
    info = RunInfo.for_simulation(config, spec, fed, **parts)
    return open_run_dir(run_dir, info, resume=resume, check=lambda saved: saved.check_same_data(fed))
