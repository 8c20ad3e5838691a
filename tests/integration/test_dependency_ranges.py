"""The dependency ranges of pyproject.toml hold, both ways (issue 17, part 4).

The core CLI takes typer, click and rich without a cap; only the flower extra
narrows them: flwr 1.42 holds typer < 0.21 (and rich < 15), and typer < 0.26
runs on the click package, whose 8.5 drops the help of positional arguments, so
the extra caps click < 8.5.

Fast: the structure of the requirements, and this venv satisfies them all.
Slow (``slow``; it needs PyPI): the CLI on the newest typer, click and rich,
installed into a temporary folder that shadows the venv's copies, and the same
checks on the venv's own (flower-capped) versions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CLI_PACKAGES = ("typer", "click", "rich")
# The extras `make setup` installs into the venv.
SETUP_EXTRAS = ("test", "flower", "parquet")
UPPER = ("<", "<=", "==", "===", "~=")
# Beyond what the flower extra admits (flwr 1.42: typer < 0.21, rich < 15; the extra: click < 8.5).
BEYOND_FLOWER = {"typer": Version("0.21"), "click": Version("8.5"), "rich": Version("15")}


def _requirements(group: str | None = None) -> list[Requirement]:
    lines = PROJECT["dependencies"] if group is None else PROJECT["optional-dependencies"][group]
    return [Requirement(line) for line in lines]


def _by_name(requirements: list[Requirement]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in requirements}


# --- fast: the structure ------------------------------------------------------


def test_core_cli_packages_have_no_upper_bound():
    core = _by_name(_requirements())
    assert {"typer", "rich"} <= set(core), "the CLI's typer and rich are core requirements"
    for name in CLI_PACKAGES:
        if name in core:
            capped = [str(s) for s in core[name].specifier if s.operator in UPPER]
            assert not capped, f"core requirement {core[name]} caps {name} ({capped}): caps belong in the flower extra"


def test_the_flower_extra_follows_flower_and_carries_the_click_cap():
    extra = _by_name(_requirements("flower"))
    flwr = extra["flwr"].specifier
    lower = [Version(s.version) for s in flwr if s.operator in (">=", ">", "~=")]
    assert lower and min(lower) >= Version("1.42"), f"flwr needs a lower bound of at least 1.42: {flwr}"
    assert Version("1.42.0") in flwr, f"flwr 1.42, the one the deployment code is tested on, is admitted: {flwr}"
    click = extra.get("click")
    assert click is not None and Version("8.4.2") in click.specifier and Version("8.5") not in click.specifier, \
        f"the flower extra caps click below 8.5: {click}"


def test_the_click_cap_is_needed_while_flower_holds_typer_on_the_click_package():
    """typer < 0.26 runs on the click package: while flwr admits no typer >= 0.26, the extra must cap click."""
    try:
        flwr_requires = [Requirement(r) for r in requires("flwr") or ()]
    except PackageNotFoundError:
        pytest.fail("flwr is not installed: `make setup` installs the flower extra")
    typer_req = _by_name(flwr_requires)["typer"]
    if not any(v in typer_req.specifier for v in (Version("0.26"), Version("0.29.2"))):
        assert "click" in _by_name(_requirements("flower")), \
            f"flwr holds {typer_req}, a typer on the click package: the flower extra must cap click"


def test_this_venv_satisfies_every_requirement_of_pyproject():
    groups = {None: _requirements()} | {extra: _requirements(extra) for extra in SETUP_EXTRAS}
    broken = []
    for extra, requirements in groups.items():
        for req in requirements:
            if req.marker is not None and not req.marker.evaluate({"extra": extra or ""}):
                continue
            try:
                installed = version(req.name)
            except PackageNotFoundError:
                broken.append(f"{req} ({extra or 'core'}): not installed")
                continue
            if not req.specifier.contains(installed, prereleases=True):
                broken.append(f"{req} ({extra or 'core'}): {installed} is installed")
    assert not broken, "the venv does not satisfy pyproject.toml: " + "; ".join(broken)


# --- slow: the CLI on the newest typer/click/rich and on the venv's ------------

# pip's words when it cannot reach an index (urllib3 / requests / socket errors).
NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|"
    r"Max retries exceeded|ProxyError|SSLError|Connection reset|RemoteDisconnected|ConnectionError")

PROBE = ("import json, importlib.metadata as m, typer, click, rich; "
         "print(json.dumps({'versions': {n: m.version(n) for n in ('typer', 'click', 'rich')}, "
         "'files': {'typer': typer.__file__, 'click': click.__file__, 'rich': rich.__file__}}))")

# The positional arguments of every command, with their help, as the code declares them
# (read in the venv, in a process of its own: registering the commands twice is not wanted here).
ARGUMENTS = """
import json, typer
from synthfed.cli.app import app, register_subcommands
register_subcommands()
found = {}
def walk(command, path):
    helps = [p.help for p in command.params if getattr(p, "param_type_name", None) == "argument"]
    if helps:
        found[" ".join(path)] = helps
    for name, sub in getattr(command, "commands", {}).items():
        walk(sub, path + [name])
walk(typer.main.get_command(app), [])
print(json.dumps(found))
"""


def _installed_in(target: Path) -> dict[str, str]:
    """{name: version} of what pip put in ``target`` (its NAME-VERSION.dist-info folders)."""
    return dict(p.name.removesuffix(".dist-info").split("-") for p in target.glob("*.dist-info"))


def _install_newest(target: Path) -> None:
    """The newest typer, click and rich from PyPI into ``target``; their other
    requirements (pydantic, shellingham, markdown-it-py...) come from the venv."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--retries", "1", "--timeout", "20", "--target", str(target), *CLI_PACKAGES]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    said = done.stdout + done.stderr
    if done.returncode != 0:
        if NETWORK_ERRORS.search(said):
            pytest.skip(f"PyPI is unreachable, so the newest typer/click/rich cannot be installed: {said.strip()[-400:]}")
        pytest.fail(f"pip could not install the newest {', '.join(CLI_PACKAGES)}: {said.strip()}")
    if NETWORK_ERRORS.search(said):  # installed, but maybe only from a local index: newest only if beyond flower's
        got = _installed_in(target)
        if any(Version(got.get(name, "0")) < floor for name, floor in BEYOND_FLOWER.items()):
            pytest.skip(f"PyPI is unreachable; pip found only {got} (not the newest): {said.strip()[-400:]}")


@pytest.fixture(scope="module")
def declared_arguments() -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", ARGUMENTS], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, check=True)
    found = json.loads(done.stdout)
    assert {"generate", "audit", "flower ledger"} <= set(found), found
    return found


@pytest.fixture(scope="module", params=["newest", "venv"])
def cli(request, tmp_path_factory):
    """How to run the CLI (``run(*args)``) on one set of typer/click/rich, and which versions it must load."""
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "SYNTHFED_DEBUG": ""}
    env.pop("PYTHONPATH", None)
    if request.param == "newest":
        target = tmp_path_factory.mktemp("newest-cli")
        _install_newest(target)
        env["PYTHONPATH"] = str(target)
        expected = _installed_in(target)
        where = str(target)
    else:
        expected = {name: version(name) for name in CLI_PACKAGES}
        where = None
    cwd = tmp_path_factory.mktemp(f"cwd-{request.param}")

    def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "synthfed.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)

    run.kind, run.expected, run.where = request.param, expected, where
    return run


def _flat(text: str) -> str:
    """Help as one line: no box drawing, single spaces (rich wraps and frames it)."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def _one_error_line(result: subprocess.CompletedProcess, code: int) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_the_cli_loads_the_versions_under_test(cli):
    result = cli(code=PROBE)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["versions"] == cli.expected, f"{cli.kind}: loaded {loaded}, expected {cli.expected}"
    versions = {name: Version(v) for name, v in loaded["versions"].items()}
    if cli.kind == "newest":
        for name, path in loaded["files"].items():
            assert path.startswith(cli.where), f"{name} came from {path}, not the newest in {cli.where}"
        beyond = {name: str(v) for name, v in versions.items() if v < BEYOND_FLOWER[name]}
        assert not beyond, f"the newest must be beyond what the flower extra admits: {beyond} are not"
    else:  # the venv, installed with the flower extra: its caps hold
        flower = _by_name(_requirements("flower"))
        assert versions["click"] in flower["click"].specifier


@pytest.mark.slow
def test_root_and_train_help_render(cli):
    root = cli("--help")
    assert root.returncode == 0, root.stderr
    assert {"train", "generate", "audit", "flower"} <= set(_flat(root.stdout).split()), root.stdout
    train = cli("train", "--help")
    assert train.returncode == 0, train.stderr
    flat = _flat(train.stdout)
    assert "--epsilon" in flat and "fp32|bf16" in flat and "fp32 | bf16 (autocast; clipping stays fp32)" in flat, flat


@pytest.mark.slow
def test_positional_arguments_show_their_help(cli, declared_arguments):
    missing = {}
    for path, helps in declared_arguments.items():
        result = cli(*path.split(), "--help")
        assert result.returncode == 0, (path, result.stderr)
        flat = _flat(result.stdout)
        lost = [text for text in helps if _flat(text) not in flat]
        if lost:
            missing[path] = lost
    assert not missing, f"{cli.kind} {cli.expected}: the help of these positional arguments is not shown: {missing}"


@pytest.mark.slow
def test_commands_parse_and_usage_errors_are_one_line(cli):
    shown = cli("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"synthfed {version('synthfed')}", shown
    line = _one_error_line(cli("train", "--precision", "fp8"), 2)
    assert "--precision" in line and "fp8" in line
    line = _one_error_line(cli("train", "--clients", "x"), 2)
    assert "--clients" in line
    assert "bogus" in _one_error_line(cli("bogus"), 2)
    assert "missing argument" in _one_error_line(cli("generate"), 2).lower()
    # --config's callback (typer.Context, typer.CallbackParam) runs and its error is a usage error
    assert "--config nowhere.toml: no such file" in _one_error_line(cli("train", "--config", "nowhere.toml"), 2)
