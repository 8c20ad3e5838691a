"""``synthfed privacy ...``: ledger reports and noise calibration."""

from __future__ import annotations

import typer

privacy_app = typer.Typer(no_args_is_help=True, help="Privacy ledger reports and noise calibration.")
