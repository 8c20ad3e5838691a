"""The SuperNode's executor for synthfed: warm, and synthfed's app only.

Flower's SuperExec starts ``flwr-clientapp`` as a new process for every
message; on these machines that process spends about 4 s importing torch,
diffusers, opacus and synthfed before it trains for a fraction of that. This
executor (started next to a SuperNode that runs ``--isolation process``)
imports all of that once, then forks one child per message. The child is what
Flower's process would be (a fresh process that runs the ClientApp for one
message and exits: nothing one message leaves in memory reaches the next),
without the imports.

It also enforces what an institution can expect of its node: it runs
synthfed's installed ClientApp and nothing else. Flower's Control API (open,
without authentication, in Flower's community edition) lets whoever reaches
the SuperLink submit a run, and a run's app bundle (FAB) may carry Python
code that a plain SuperNode imports and runs next to the private data. Here
a FAB whose ClientApp is not ``synthfed.flower.client_app:app``, or that
carries code files, is refused before anything of it is imported.

Nothing here changes what a ClientApp computes. It relies on Flower's
SuperExec internals (``run_superexec``'s executor and ``run_clientapp``),
tested with flwr 1.42; ``warm_exec_supported()`` says whether the installed
Flower has them (the deployment falls back to Flower's own executor if not)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tomllib
import traceback
from pathlib import Path

ALLOWED_CLIENTAPP = "synthfed.flower.client_app:app"
ALLOWED_FAB_FILES = {"pyproject.toml", "README.md", ".gitignore", "LICENSE"}
PRELOAD = ("torch", "diffusers", "opacus", "synthfed.flower.client_app", "synthfed.federated.client",
           "synthfed.privacy.training", "synthfed.training")


class ForeignAppError(RuntimeError):
    """A run asked this node to execute an app that is not synthfed's."""


def warm_exec_supported() -> bool:
    try:
        import flwr.supercore.superexec.run_superexec  # noqa: F401
        from flwr.supernode.runtime import run_clientapp  # noqa: F401

        return hasattr(run_clientapp, "get_load_client_app_fn") and hasattr(run_clientapp, "get_project_dir")
    except ImportError:
        return False


def check_fab(app_dir: Path) -> None:
    """Refuse an app bundle that is not synthfed's: another ClientApp, or any
    file that could be imported or executed (only the app's config may come)."""
    extra = sorted(str(p.relative_to(app_dir)) for p in app_dir.rglob("*")
                   if p.is_file() and p.name not in ALLOWED_FAB_FILES)
    if extra:
        raise ForeignAppError(f"the run's app carries files this node does not run: {', '.join(extra[:5])}")
    try:
        project = tomllib.loads((app_dir / "pyproject.toml").read_text())
        clientapp = project["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        raise ForeignAppError("the run's app has no readable [tool.flwr.app.components] clientapp") from None
    if clientapp != ALLOWED_CLIENTAPP:
        raise ForeignAppError(f"the run's ClientApp is {clientapp!r}; this node runs only {ALLOWED_CLIENTAPP}")


def _guard_app_loading() -> None:
    """Check the FAB between its installation and the ClientApp's import."""
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.supernode.runtime import run_clientapp as rc

    make_loader = rc.get_load_client_app_fn

    def guarded(*args, **kwargs):
        load = make_loader(*args, **kwargs)

        def load_checked(fab_id: str, fab_version: str, fab_hash: str):
            try:
                check_fab(Path(rc.get_project_dir(fab_id, fab_version, fab_hash)))
            except ForeignAppError as e:
                raise LoadClientAppError(f"refused by synthfed's node: {e}") from None
            return load(fab_id, fab_version, fab_hash)

        return load_checked

    rc.get_load_client_app_fn = guarded


def _run_child(spec) -> None:
    """In the forked child: one message, then exit without the parent's handlers."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        _guard_app_loading()
        run_clientapp(runtime_api_address=spec.runtime_api_address, token=spec.token, insecure=spec.insecure,
                      certificates=validate_and_resolve_root_certificates(spec.root_certificates_path, spec.insecure),
                      parent_pid=spec.parent_pid, runtime_dependency_install=False)
        code = 0
    except SystemExit as e:  # flwr_exit ends every task this way
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must never return into the parent's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkExecutor:
    """Flower's executor interface (``SubprocessExecutor``'s methods): ClientApp
    tasks in forked children, anything else as Flower would run it."""

    def __init__(self) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self.fallback = SubprocessExecutor()
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types, **kwargs):
        return self.fallback.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, *args, **kwargs) -> None:
        self.fallback.wait_for_capacity(*args, **kwargs)

    def launch(self, spec):
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self.fallback.launch(spec)
        pid = os.fork()
        if pid == 0:
            _run_child(spec)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children (no zombies over a long run)."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        self.fallback.close()


def preload() -> None:
    """Everything a message needs, imported before the first fork (no threads
    started: torch's thread pools start at the first operation, in a child)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="synthfed's warm SuperExec for a SuperNode (--isolation process)")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--root-certificates")
    parser.add_argument("--insecure", action="store_true")
    args = parser.parse_args(argv)
    preload()
    from flwr.supercore.superexec import run_superexec as rs

    # Flower builds its executor by name; ours is handed in the same way.
    rs.get_executor = lambda *a, **k: ForkExecutor()
    rs.run_superexec(runtime_api_address=args.runtime_api_address, insecure=args.insecure,
                     root_certificates_path=args.root_certificates, parent_pid=args.parent_pid,
                     runtime_dependency_install=False)


if __name__ == "__main__":
    main()
