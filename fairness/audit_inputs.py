"""What ``run_audit`` settles before its long work, and what it undoes after a failure.

* ``--out`` must be writable: it is created and a probe file written and
  deleted before any classifier is trained, so an unwritable folder fails in
  a second, not after minutes of training;
* a failed audit removes what it created under ``--out`` (the folder itself
  only if the audit made it; in a folder that existed, only the new entries);
* ``--data`` must be the data the run was trained on. Same class names are
  not enough: another dataset with classes '0'..'9' gave a full report ("keeps
  88% of the real data's utility") comparing unrelated data. The run's
  ``run.json`` records its data spec and each client's fingerprint (sha256 of
  pixels and labels); a ``--data`` with another spec must rebuild those very
  clients, else the audit is refused unless explicitly allowed, and then the
  report carries a warning.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from synthfed.data import DataError, FederatedData, ImageDataset
from synthfed.errors import DataNote, InputError, UsageError
from synthfed.fairness.release import public_spec

# The CLI option that maps to ``run_audit(allow_real_mismatch=True)``.
REAL_MISMATCH_FLAG = "--real-mismatch-ok"


# --------------------------------------------------------------------------- --out
def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what mkdir -p would create)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _remove_new_entries(out: Path, created: Path | None, before: set[str]) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for name in set(os.listdir(out)) - before if out.is_dir() else ():
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def audit_output(out_dir):
    """Make ``out_dir`` and prove it writable now (InputError naming it otherwise);
    on any failure inside the block, remove what this audit created there."""
    if out_dir is None:
        yield
        return
    out = Path(out_dir)
    created = _first_missing(out.absolute())
    before = set(os.listdir(out)) if created is None and out.is_dir() else set()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".synthfed-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        _remove_new_entries(out, created, before)
        raise InputError(f"--out {out_dir}: cannot write the report there ({exc.strerror or exc}); "
                         "choose a folder you can write to") from None
    try:
        yield
    except BaseException:
        _remove_new_entries(out, created, before)
        raise


# --------------------------------------------------------------------------- --data
def note_real_resized(real: str, real_train: ImageDataset, size: int) -> None:
    """DataNote when --data is not at the synthetic images' size (it is resized to match)."""
    _, h, w = real_train.image_shape
    if (h, w) != (size, size):
        warnings.warn(f"--data resized from {w}x{h} to {size}x{size} to match the synthetic images", DataNote,
                      stacklevel=2)


def _spec_key(spec: str) -> tuple[str, tuple[str, ...]]:
    """A spec with its kind lower-cased and each path made absolute, so two
    spellings of one source compare equal."""
    kind, sep, arg = str(spec).strip().partition(":")
    if not sep and ("/" in kind or os.sep in kind):  # a bare path (the folders partition)
        return "", (str(Path(kind).expanduser().resolve()),)
    parts = [p.strip() for p in arg.split(",")] if arg.strip() else []
    return kind.strip().lower(), tuple(str(Path(p).expanduser().resolve()) for p in parts)


def _fingerprints(fed: FederatedData) -> list[str]:
    return [c.fingerprint() for c in fed.clients]


def _contains(real_train: ImageDataset, pooled: ImageDataset) -> bool:
    """Every pooled client image is in --data's training split, with the same class name."""
    have = {(img.tobytes(), real_train.class_names[y]) for img, y in zip(real_train.images, real_train.labels)}
    return all((img.tobytes(), pooled.class_names[y]) in have for img, y in zip(pooled.images, pooled.labels))


def _rebuilt_from_real(real: str, config, recorded: list[str]):
    """The run's clients rebuilt from --data with the run's own split settings,
    when that reproduces the recorded fingerprints; else None."""
    from synthfed.training import load_federated_data

    if not recorded or config.partition == "folders":
        return None
    try:
        fed = load_federated_data(config.replace(data=real))
    except (DataError, FileNotFoundError):
        return None
    return fed if _fingerprints(fed) == recorded else None


def training_data(real: str, real_train: ImageDataset, size: int, run: Path, info: dict, config, *,
                  allow_mismatch: bool) -> tuple[FederatedData | None, str | None]:
    """The run's clients' datasets, and the warning to stamp on the report when
    --data is not the training data (None when it is).

    --data is the training data when it names the run's source (and the
    rebuilt clients match the recorded fingerprints), when rebuilding the
    run's split from --data reproduces those fingerprints (the same files
    under another path), or, for per-client folder runs, when --data's
    training split holds every client image. Otherwise: UsageError, or with
    ``allow_mismatch`` the run's own data (when it loads) plus a warning.
    """
    from synthfed.training import load_federated_data

    recorded = [str(c.get("fingerprint") or "") for c in info.get("clients", [])]
    recorded = recorded if recorded and all(recorded) else []  # Flower runs record none
    same_spec = _spec_key(real) == _spec_key(config.data)
    fed = None if same_spec else _rebuilt_from_real(real, config, recorded)
    if fed is not None:
        return fed, None
    where = os.path.normpath(run)  # a card's run is dataset/../run
    reason = f"{real} is not the data {where} was trained on ({config.data})"
    if same_spec or config.partition == "folders":
        fed = load_federated_data(config)  # the run's own data, as it is now
        changed = bool(recorded) and _fingerprints(fed) != recorded
        if changed:
            reason = (f"{real} is not the data {where} was trained on: its files changed since training (the "
                      "rebuilt clients' fingerprints differ from run.json)")
        elif same_spec or _contains(real_train, fed.pooled().resized(size)):
            return fed, None
    if not allow_mismatch:
        raise UsageError(f"--data {reason}; pass the training data, or {REAL_MISMATCH_FLAG} to audit against "
                         "other data")
    if fed is None:
        with contextlib.suppress(DataError, FileNotFoundError):
            fed = load_federated_data(config)
    warning = (f"AUDITED AGAINST OTHER DATA: --data {public_spec(real)} is not the data run {run.name} was "
               f"trained on ({public_spec(config.data)}); the utility and fairness numbers compare the synthetic "
               f"images with different real data ({REAL_MISMATCH_FLAG}).")
    return fed, warning


# --------------------------------------------------------------------------- loaded inputs
def align_classes(synthetic: ImageDataset, real: ImageDataset, spec: str) -> ImageDataset:
    if synthetic.class_names == real.class_names:
        return synthetic
    if set(synthetic.class_names) <= set(real.class_names):
        return synthetic.with_class_names(real.class_names)
    raise DataError(
        f"the synthetic classes {list(synthetic.class_names)} are not the classes of --data {spec} "
        f"({list(real.class_names)}); audit against the data the model was trained on"
    )


def resolve_run(run_dir, card: dict, dataset_dir: Path, notes: list[str]) -> Path | None:
    """The run that produced the images: ``run_dir`` if given (must exist), else
    the card's source (a path relative to the dataset folder)."""
    if run_dir is not None:
        path = Path(run_dir)
        if not (path / "run.json").is_file():
            raise FileNotFoundError(f"{path} is not a synthfed run directory (no run.json)")
        return path
    src = (card.get("source") or {}).get("run_dir")
    if not src:
        notes.append("The dataset card names no source run: per-client baselines and the membership attack are skipped "
                     "(pass --run RUN_DIR to add them).")
        return None
    path = dataset_dir / src  # an absolute path (older cards) stays as it is
    if not (path / "run.json").is_file():
        notes.append(f"The card's source run {Path(src).name} is not available here: per-client baselines and the "
                     "membership attack are skipped (pass --run RUN_DIR to add them).")
        return None
    return path


@dataclass
class AuditInputs:
    """Everything loaded and checked before the long work starts."""

    synthetic: ImageDataset
    card: dict
    real_test: ImageDataset
    train_set: ImageDataset  # the run's pooled clients, else --data's training split
    run: Path | None
    fed: FederatedData | None
    real_warning: str | None  # set when --data is not the training data (allowed explicitly)
    real_size: tuple[int, int]  # --data's own (height, width) before resizing


def stamp_real_warning(report: dict, warning: str | None) -> None:
    """A report on other data than the training data says so where it is read:
    a field, the first note, and the utility headline (the CLI prints it)."""
    report["real_data_warning"] = warning
    if warning:
        report["notes"].insert(0, warning)
        util = report["summary"]["utility"]
        util["text"] = f"{warning} {util['text']}"
        if util["level"] == "ok":
            util["level"] = "warning"
