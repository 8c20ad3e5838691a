"""The ServerApp: reads the run config and hands over to ``FlowerServer``."""

from __future__ import annotations

from logging import INFO, WARNING

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from synthfed.flower.run_config import from_run_config
from synthfed.flower.server import FlowerServer, log_progress

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config, options = from_run_config(dict(context.run_config))
    progress = log_progress(info=lambda text: log(INFO, "[synthfed] %s", text),
                            warn=lambda text: log(WARNING, "[synthfed] %s", text))
    result = FlowerServer(grid, config, options, context=context, progress=progress).run()
    log(INFO, "[synthfed] run directory: %s (last round %s)", result["run_dir"], result["last_round_dir"])
