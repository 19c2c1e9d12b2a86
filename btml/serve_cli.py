"""``btml serve``: archive models, start / check / stop TorchServe, renew its token.

Errors are one line on stderr: exit 2 for bad input (a bad value, an unknown model, an archive
that does not match its pin), 1 for a server that failed; ``status`` exits 3 when none runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import click

from btml.common import pass_config
from btml.config import Config
from btml.config_file import config_file_option
from core.errors import BtmlError, UserError

PORTS = (
    "inference_port",
    "management_port",
    "metrics_port",
    "grpc_inference_port",
    "grpc_management_port",
)


def _server_cfg(config: Config, ports: tuple[int, ...] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    from serving.server import ServerConfig

    extra = dict(zip(PORTS, ports, strict=True)) if ports else {}
    home, registry = config.store / "serving", config.store / "models"
    return ServerConfig(home=home, registry=registry, **extra, **kw)  # type: ignore[arg-type]


def _fail(err: BtmlError) -> NoReturn:
    """One line on stderr (a server's log tail stays in its logs/): exit 2 for the user's
    input, 1 for a server fault."""
    first = (str(err).splitlines() or [type(err).__name__])[0]
    click.echo(f"error: {first}", err=True)
    sys.exit(2 if isinstance(err, UserError) else 1)


@click.group()
def serve() -> None:
    """Serve registered models on TorchServe (127.0.0.1, token authorization on)."""


@serve.command("archive")
@config_file_option
@click.argument("model")
@click.option(
    "--batch-size",
    default=1,
    show_default=True,
    help="Dynamic batching: requests per forward pass.",
)
@click.option(
    "--max-batch-delay",
    default=0,
    show_default=True,
    help="Dynamic batching: ms to wait for a batch.",
)
@click.option("--workers", default=1, show_default=True, help="Worker processes for this model.")
@click.option(
    "--threads",
    default=1,
    show_default=True,
    help="Torch threads per worker (0 = cores / workers).",
)
@pass_config
def archive_cmd(
    config: Config, model: str, batch_size: int, max_batch_delay: int, workers: int, threads: int
) -> None:
    """Build MODEL[:VERSION]'s .mar (and its .sha256) in the serving model store."""
    from mlmodels.registry import ModelRegistry
    from serving.archive import ModelServeConfig, build_archive, sha256_file

    try:
        mcfg = ModelServeConfig(
            batch_size=batch_size,
            max_batch_delay_ms=max_batch_delay,
            workers=workers,
            threads=threads,
        )
        path = build_archive(
            ModelRegistry(config.store / "models"), model, _server_cfg(config).model_store, mcfg
        )
    except BtmlError as err:
        _fail(err)
    click.echo(f"archived {path}")
    click.echo(f"sha256 {sha256_file(path)}")


def _archives_for(config: Config, refs: tuple[str, ...]) -> list[Path]:
    from mlmodels.registry import ModelRegistry
    from serving.archive import archive_name, build_archive

    store = _server_cfg(config).model_store
    if not refs:
        found = sorted(store.glob("*.mar"))
        if not found:
            raise click.UsageError(
                f"no archives in {store}; name a model or run btml serve archive"
            )
        return found
    reg = ModelRegistry(config.store / "models")
    out = []
    for ref in refs:
        card = reg.card(ref)
        path = store / archive_name(card.name, card.version)
        if not path.exists():
            click.echo(f"archiving {card.ref} ...")
            build_archive(reg, card.ref, store)
        out.append(path)
    return out


@serve.command("start")
@config_file_option
@click.argument("models", nargs=-1)
@click.option(
    "--default", "defaults", multiple=True, help="NAME:VERSION to serve by default (repeatable)."
)
@click.option("--inference-port", default=8080, show_default=True)
@click.option("--management-port", default=8081, show_default=True)
@click.option("--metrics-port", default=8082, show_default=True)
@click.option("--grpc-inference-port", default=7070, show_default=True)
@click.option("--grpc-management-port", default=7071, show_default=True)
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for READY.")
@click.option(
    "--enable-model-api",
    is_flag=True,
    help="Allow registering more models at runtime (off by default).",
)
@pass_config
def start_cmd(
    config: Config,
    models: tuple[str, ...],
    defaults: tuple[str, ...],
    inference_port: int,
    management_port: int,
    metrics_port: int,
    grpc_inference_port: int,
    grpc_management_port: int,
    timeout: float,
    enable_model_api: bool,
) -> None:
    """Start TorchServe with MODEL[:VERSION]... (default: every archive in the model store)."""
    from mlmodels.registry import parse_ref
    from serving.server import start

    try:
        cfg = _server_cfg(
            config,
            (
                inference_port,
                management_port,
                metrics_port,
                grpc_inference_port,
                grpc_management_port,
            ),
            startup_timeout_s=timeout,
            enable_model_api=enable_model_api,
        )
        archives = _archives_for(config, models)
        chosen: dict[str, int] = {}
        for d in defaults:
            name, ver = parse_ref(d)
            if ver is None:
                raise click.UsageError(f"--default needs NAME:VERSION, got {d!r}")
            chosen[name] = ver
        click.echo(f"starting TorchServe with {', '.join(a.name for a in archives)} ...")
        state = start(cfg, archives, chosen)
    except BtmlError as err:
        _fail(err)
    click.echo(f"ready: pid {state.pid}, inference http://127.0.0.1:{state.inference_port}")
    for name, vers in state.models.items():
        click.echo(
            f"  {name}: versions {', '.join(map(str, vers))} (default {state.defaults[name]})"
        )
    click.echo(f"token: {cfg.key_file} (inference key, send as 'Authorization: Bearer KEY')")


@serve.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_config
def status_cmd(config: Config, as_json: bool) -> None:
    """Show whether the server runs, its ports, and each model version's workers."""
    from serving.server import status

    st = status(_server_cfg(config))
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    if st.get("stale"):
        click.echo(
            f"not running: stale state file in {st['home']}: {st['stale']}; "
            "btml serve stop removes it"
        )
        raise SystemExit(3)
    if not st["running"]:
        click.echo(f"not running ({st['home']})")
        raise SystemExit(3)
    click.echo(
        f"running: pid {st['pid']}, inference :{st['inference_port']}, management :{st['management_port']}"
    )
    for name, rows in st["status"].items():
        for r in rows:
            flag = " (default)" if r["default"] else ""
            click.echo(f"  {name}:{r['version']}{flag} workers {', '.join(r['workers']) or 'none'}")


@serve.command("stop")
@pass_config
def stop_cmd(config: Config) -> None:
    """Stop the server and all its worker processes (never a process it cannot identify)."""
    from serving.server import shutdown

    click.echo(shutdown(_server_cfg(config)).message)


@serve.command("scale")
@click.argument("model")
@click.option("--workers", type=click.IntRange(1, 64), required=True, help="Workers to run.")
@pass_config
def scale_cmd(config: Config, model: str, workers: int) -> None:
    """Run WORKERS workers for MODEL:VERSION (its archive is checked against its pin first)."""
    from mlmodels.registry import parse_ref
    from serving.server import scale

    name, ver = parse_ref(model)
    if ver is None:
        raise click.UsageError(f"scale needs NAME:VERSION, got {model!r}")
    try:
        scale(_server_cfg(config), name, ver, workers)
    except BtmlError as err:
        _fail(err)
    click.echo(f"{name}:{ver}: {workers} workers")


@serve.command("renew-token")
@click.option(
    "--kind", type=click.Choice(["inference", "management"]), default="inference", show_default=True
)
@pass_config
def renew_token_cmd(config: Config, kind: str) -> None:
    """Have the server issue a new token (clients re-read the key file when refused)."""
    from serving.server import renew_token

    cfg = _server_cfg(config)
    try:
        renew_token(cfg, kind)
    except BtmlError as err:
        _fail(err)
    click.echo(f"renewed the {kind} token in {cfg.key_file}")
