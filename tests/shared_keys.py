"""Giving two runs the same secret noise keys, for tests that compare them.

Keys are made with the OS's CSPRNG for every new run, so two runs never share
noise; a test that compares an uninterrupted run with a crashed-and-resumed
one (or a Flower node with the simulation) installs the first run's keys in
the second's private state before it starts, as restoring a backup would."""

from __future__ import annotations

import shutil
from pathlib import Path

from synthfed.privacy.noise_keys import load_or_create_simulation_keys, provision_node_key, simulation_keys_path


def copy_simulation_keys(src_run: str | Path, dst_run: str | Path) -> None:
    dst = simulation_keys_path(dst_run)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.parent.chmod(0o700)
    shutil.copy2(simulation_keys_path(src_run), dst)


def give_nodes_simulation_keys(sim_run: str | Path, node_dirs: dict[int, str | Path]) -> None:
    """Install client i's simulation key as the key of node i (``node_dirs``: id -> <state-dir>/<run-name>)."""
    keys = load_or_create_simulation_keys(sim_run, list(node_dirs), create=False)
    for cid, node_dir in node_dirs.items():
        provision_node_key(node_dir, keys[cid])
