"""``btml dashboard``: the web dashboard (FastAPI under uvicorn) over the store, the model
registry, the run registry and the live journals."""

from __future__ import annotations

from pathlib import Path

import click

from btml.common import fail, pass_config
from btml.config import Config
from core.errors import BtmlError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option("--store", "store", default=None, help="Data store (default: the group's --store).")
@click.option("--db", "db_url", default=None, help="Run registry URL (default: the group's --db).")
@click.option("--max-jobs", type=int, default=2, show_default=True, help="Job processes at once.")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host other machines can reach (put TLS in a reverse proxy in front).",
)
@pass_config
def dashboard(
    config: Config,
    host: str,
    port: int,
    store: str | None,
    db_url: str | None,
    max_jobs: int,
    allow_remote: bool,
) -> None:
    """Serve the dashboard at http://HOST:PORT until Ctrl-C.

    Every API call needs the access token: BTML_DASHBOARD_TOKEN when set, otherwise one kept
    in {store}/dashboard/token (mode 0600). The URL printed at start carries it once; the page
    then keeps it in a cookie. Training and backtests started from the page run as separate
    processes and are recorded in the run registry like the CLI's.
    """
    from webapp.app import serve
    from webapp.settings import DashboardSettings

    try:
        settings = DashboardSettings(
            store=Path(store) if store else config.store, db_url=db_url or config.db_url,
            host=host, port=port, max_jobs=max_jobs, allow_remote=allow_remote,
        )  # fmt: skip
        serve(settings, log=click.echo)
    except BtmlError as err:
        fail(err)
    except OSError as err:  # the port is taken, the address is not ours
        fail(BtmlError(f"cannot serve on {host}:{port} ({err.strerror or err}); try --port"))
