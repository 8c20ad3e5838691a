"""The command line's one error boundary.

Every ``synthfed`` command runs inside :func:`boundary`, entered by
:class:`SynthfedGroup` (the root group's class) around parsing and around the
command itself, so no command handles errors of its own. What the user can act
on becomes ONE ``error:`` line on stderr and an exit code:

- 2: a usage error: ``synthfed.errors.UsageError`` (``ConfigError`` among
  them) or a click/typer usage error (unknown option, bad integer...);
- 1: everything else: bad data, a damaged, missing or locked file, a full or
  read-only disk (the file and the OS's words), a runtime failure;
- 130: Ctrl-C.

``warnings.warn(text, DataNote)`` from the core is printed as one ``note:``
line. ``--debug`` (or ``SYNTHFED_DEBUG=1``) re-raises instead, for the full
traceback (without locals: they can hold data)."""

from __future__ import annotations

import errno
import json
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from synthfed.errors import DataNote, SynthfedError

# typer < 0.26 raises the click package's errors, typer >= 0.26 those of its own
# copy of click (typer._click, private): both found from typer's public BadParameter.
_CLICK_ERRORS = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError, ClickException = _CLICK_ERRORS["UsageError"], _CLICK_ERRORS["ClickException"]

DEBUG_ENV = "SYNTHFED_DEBUG"
INTERRUPTED = 130
err = Console(stderr=True)

# Errors that only a write can cause: the message says "cannot write".
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def debug_requested(args: list[str] | None = None) -> bool:
    if args is not None and "--debug" in args:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def say(label: str, style: str, message: str) -> None:
    """One line on stderr: soft_wrap so that rich never breaks it, no markup
    (messages hold paths and option values like ``[x]``)."""
    err.print(Text.assemble((label, style), " ", " ".join(str(message).split())), soft_wrap=True, highlight=False)


def _first_line(exc: BaseException) -> str:
    """A foreign message's first line: torch and others append pages of context."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] + (" (--debug shows the rest)" if len(lines) > 1 else "")


def _file_in_traceback(exc: BaseException, suffix: str) -> str | None:
    """The file a decoder failed on. ``json.loads(path.read_text())`` and
    safetensors' ``load_file(name)`` lose the name in their error; the frame
    that read the file still holds it. Only an unambiguous answer is given:
    the innermost frame with exactly one existing ``*suffix`` file among its
    locals (a wrong file name would send the user to the wrong file)."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        found = {str(v) for v in frame.f_locals.values()
                 if isinstance(v, (str, Path)) and len(str(v)) < 4096 and "\n" not in str(v)
                 and str(v).endswith(suffix) and os.path.isfile(v)}
        if len(found) == 1:
            return found.pop()
    return None


def _file_in_the_way(path: str) -> Path | None:
    """The file that stands where a folder of ``path`` should be (``--out a/b``
    when ``a`` is a file), if any: the OS only says "Not a directory"."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            return p if not p.is_dir() else None
    return None


def _os_message(exc: OSError) -> str:
    if exc.filename is None:  # the core's own sentence ("X is not empty; choose a new --out")
        return _first_line(exc)
    name = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and not exc.filename2:
        blocker = _file_in_the_way(str(exc.filename))
        if blocker is not None and blocker == Path(exc.filename):
            return f"cannot create the folder {name}: a file of that name is in the way"
        if blocker is not None:
            return f"cannot create {name}: {blocker} is a file, not a folder"
    verb = "cannot write" if exc.errno in _WRITE_ERRNOS else "cannot access"
    return f"{verb} {name}: {exc.strerror or _first_line(exc)}"


def _usage_message(exc: UsageError) -> str:
    # click and typer both append "Did you mean 'train'?" to an unknown command: say it once.
    sentences = list(dict.fromkeys(re.split(r"(?<=[.?!])\s+", " ".join(exc.format_message().split()))))
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return " ".join(sentences).rstrip(".") + hint


def _is_safetensors_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "SafetensorError" or type(exc).__module__.startswith("safetensors")


def _passes_through(exc: BaseException) -> bool:
    """An exit already decided: ``typer.Exit`` and ``typer.Abort`` (both
    RuntimeErrors, so they must not be caught as runtime failures), and click's
    "no arguments: show the help", which typer renders itself."""
    # BrokenPipeError: output piped into `head`; click exits quietly on it.
    return (isinstance(exc, (typer.Exit, typer.Abort, BrokenPipeError))
            or type(exc).__name__ == "NoArgsIsHelpError")


def describe(exc: Exception) -> tuple[str, int]:
    """(one-line message, exit code) of an error raised by a command."""
    if isinstance(exc, UsageError):
        return _usage_message(exc), 2
    if isinstance(exc, ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, SynthfedError):
        return str(exc), exc.exit_code
    if isinstance(exc, json.JSONDecodeError):
        where = _file_in_traceback(exc, ".json") or "a JSON file"
        return f"cannot read {where}: damaged, not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", 1
    if isinstance(exc, UnicodeDecodeError):  # read_text() of a binary file: its frame holds the Path
        where = _file_in_traceback(exc, "") or "a text file"
        return f"cannot read {where}: binary or damaged, not text ({exc.reason} at byte {exc.start})", 1
    if _is_safetensors_error(exc):
        where = _file_in_traceback(exc, ".safetensors") or "a weights file"
        return f"cannot read {where}: damaged, not a safetensors file ({_first_line(exc)})", 1
    if isinstance(exc, OSError):
        return _os_message(exc), 1
    if isinstance(exc, (ValueError, RuntimeError, ImportError)):  # ImportError: an optional package missing
        return _first_line(exc), 1
    # Anything else is a bug (or a file damaged in a way nobody checks for):
    # still one line, with the way to the traceback for a report.
    return (f"unexpected {type(exc).__name__}: {_first_line(exc)} (a bug or a damaged file; "
            f"rerun with --debug for the traceback)"), 1


def _note_hook(previous):
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataNote):
            say("note:", "yellow", str(message))
        else:
            previous(message, category, filename, lineno, file, line)

    return show


@contextmanager
def boundary(debug: bool = False) -> Iterator[None]:
    """Run a command: its errors become one line and an exit code, its
    ``DataNote`` warnings ``note:`` lines (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("default", category=DataNote)  # never silenced by a global "ignore"
        warnings.showwarning = _note_hook(warnings.showwarning)
        try:
            yield
        except KeyboardInterrupt:
            if debug:
                raise
            say("error:", "red", "interrupted")
            raise typer.Exit(INTERRUPTED) from None
        except Exception as exc:
            if debug or _passes_through(exc):
                raise
            message, code = describe(exc)
            say("error:", "red", message)
            raise typer.Exit(code) from None


def run_guarded(command: Callable[[], object], *, debug: list[str] | None = None) -> int:
    """Run ``command`` (a program outside click: ``python -m synthfed.cli.demo``)
    inside :func:`boundary`; its exit code. ``debug``: its arguments, for ``--debug``."""
    try:
        with boundary(debug=debug_requested(debug)):
            command()
    except typer.Exit as exc:
        return exc.exit_code
    return 0


class SynthfedGroup(TyperGroup):
    """The root group: parsing and every command run inside :func:`boundary`.

    ``--debug`` is a root option; it is moved to the front wherever it is
    typed (``synthfed train --debug``), so that it works after the command name too."""

    def make_context(self, info_name, args, parent=None, **extra):
        args = list(args)
        if parent is None and "--debug" in args:
            args = ["--debug", *(a for a in args if a != "--debug")]
        with boundary(debug=debug_requested(args)):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: typer.Context):
        with boundary(debug=bool(ctx.params.get("debug")) or debug_requested()):
            return super().invoke(ctx)
