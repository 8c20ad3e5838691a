"""What may leave in an audit report: no absolute path, no real pixels or real
class histograms unless asked for, and never written into a released folder.

An audit report is meant to be attached to a data-sharing request, so it is
a released file (DESIGN.md section 3): whoever holds it must learn nothing
about the clients beyond what the dataset card already publishes."""

from __future__ import annotations

import os
from pathlib import Path

from synthfed.errors import UsageError

# A folder holding one of these is a released dataset or a private run
# directory: a report written there would end up shipped or mixed with them.
PROTECTED_MARKERS = {"manifest.csv": "a generated dataset folder", "run.json": "a run directory"}
PERSONAL_DATA_BANNER = "contains personal data: do not share"


def check_report_dir(out_dir: str | Path, *, datasets: list[str | Path] = (), run: str | Path | None = None) -> None:
    """Refuse an ``--out`` inside (or equal to) an audited dataset folder, a run
    directory, or any generated dataset or run folder (UsageError, a ValueError: one line)."""
    out = Path(out_dir).resolve()
    guarded = [(Path(d).resolve(), "the audited dataset folder") for d in datasets]
    if run is not None:
        guarded.append((Path(run).resolve(), "the run directory"))
    for folder, what in guarded:
        if out == folder or folder in out.parents:
            raise UsageError(f"--out {out_dir} is inside {what} {Path(folder).name}: the report would be shipped "
                             "with it; choose a folder outside it")
    for folder in (out, *out.parents):
        for marker, what in PROTECTED_MARKERS.items():
            if (folder / marker).is_file():
                raise UsageError(f"--out {out_dir} is inside {what} ({folder.name}); choose a folder outside it")


def public_spec(spec: str) -> str:
    """A ``--data`` spec with every path cut to its last part:
    ``folder:/home/alice/scans`` -> ``folder:scans``; ``digits`` stays."""
    kind, sep, arg = str(spec).partition(":")
    if not sep:
        return Path(kind).name if ("/" in kind or os.sep in kind) else kind
    return kind + ":" + ",".join(Path(p.strip()).name for p in arg.split(","))


def public_source(source: dict) -> dict:
    """A card's ``source`` without absolute paths (cards written before they
    were path-free named the run and model folder by absolute path)."""
    out = {}
    for key, value in (source or {}).items():
        if isinstance(value, str) and os.path.isabs(value):
            value = Path(value).name
        out[key] = value
    return out


def scrub_local_paths(text: str, paths: list[str | Path]) -> str:
    """Last line of defence for free text (notes, error messages): replace each
    absolute local path in ``paths`` by its last part, then the home folder by ~."""
    home = str(Path.home().resolve())
    roots = {str(Path(p).resolve()) for p in paths if p is not None} - {home}
    for root in sorted(roots, key=len, reverse=True):  # longest first: /a/b/c before /a/b
        if root != Path(root).anchor:
            text = text.replace(root, Path(root).name)
    return text.replace(home, "~") if home != Path(home).anchor else text
