"""A job's process: ``python -m webapp.job_main`` reads one request (JSON on stdin), calls the
workflow, and reports on stdout as JSON lines::

    {"event": "log", "message": "run 20261205T..."}      every line the workflow logs
    {"event": "run", "run_id": "..."}                    once its run is recorded
    {"event": "epoch", "epoch": 3, "losses": {...}}      training: after every epoch
    {"event": "done", "run_id": "...", "metrics": {...}}
    {"event": "error", "message": "...", "user_error": true}

It dies with the dashboard (``PR_SET_PDEATHSIG``), so a killed dashboard leaves no orphan
and its run is marked ``lost`` on the next start. SIGTERM cancels (the run is ``cancelled``).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import UserError

RUN_LINE = re.compile(r"^run (\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{6})$")
Emit = Callable[[dict[str, Any]], None]


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def _logger(out: Emit) -> Callable[[str], None]:
    def log(message: str) -> None:
        out({"event": "log", "message": str(message)})
        m = RUN_LINE.match(str(message).strip())
        if m:
            out({"event": "run", "run_id": m.group(1)})

    return log


def run_backtest(store: Path, params: dict[str, Any], db_url: str | None, out: Emit) -> Any:
    from workflows.backtest import BacktestConfig, backtest

    res = backtest(store, BacktestConfig.from_dict(params), log=_logger(out), db_url=db_url)
    return res.run_id


def run_train(store: Path, params: dict[str, Any], db_url: str | None, out: Emit) -> Any:
    from workflows.train import TrainRunConfig, train

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        out({"event": "epoch", "epoch": epoch, "losses": row, "ended_at": time.time()})

    cfg = TrainRunConfig.from_dict(params)
    res = train(store, cfg, on_epoch=on_epoch, log=_logger(out), db_url=db_url)
    return res.run_id


def run_import(store: Path, params: dict[str, Any], db_url: str | None, out: Emit) -> Any:
    from feeds.sources.csv_source import CsvOptions
    from workflows.data import import_file

    opts = CsvOptions(**params.get("options", {}))
    flags = {k: bool(params.get(k, False)) for k in ("drop_invalid", "replace", "allow_jump")}
    result, run_id = import_file(store, params["path"], opts, db_url=db_url, **flags)
    out({"event": "run", "run_id": run_id})
    out({"event": "log", "message": f"stored {', '.join(result.stored) or 'nothing'}"})
    return run_id


def run_download(store: Path, params: dict[str, Any], db_url: str | None, out: Emit) -> Any:
    """Fetch what the store lacks; one log line per symbol, failed if any symbol failed."""
    from core.credentials import AlpacaCredentials
    from core.errors import SourceUnavailable
    from feeds.download import download
    from feeds.sources.base import get_source
    from feeds.store import ParquetStore

    name, symbols = params["source"], list(params["symbols"])
    opts: dict[str, Any] = {}
    if name == "alpaca":
        creds = AlpacaCredentials.from_env(os.environ)
        opts = {"key_id": creds.key_id if creds else None,
                "secret_key": creds.secret_key if creds else None,
                "url": os.environ.get("BTML_ALPACA_DATA_URL") or None}  # fmt: skip
    done: list[str] = []

    def on_symbol(sym: str) -> None:
        done.append(sym)
        out({"event": "progress", "done": len(done), "total": len(symbols)})

    report = download(ParquetStore(store), get_source(name, **opts), symbols,
                      timeframe=params.get("timeframe", "1Day"),
                      start=params.get("start") or "2000-01-01", end=params.get("end"),
                      on_symbol=on_symbol)  # fmt: skip
    for line in report.lines():
        out({"event": "log", "message": line})
    if not report.ok:
        raise SourceUnavailable(
            f"{len(report.failed)} of {len(symbols)} symbol(s) failed "
            f"(first: {next(iter(report.failed.items()))[1]}); run it again to fetch what is missing"
        )
    return None


def run_kill(store: Path, params: dict[str, Any], db_url: str | None, out: Emit) -> Any:
    """The kill switch (cancel all; ``flatten``: close all), journaled before it sends."""
    from brokers.alpaca.config import AlpacaConfig
    from brokers.alpaca.store import kill_switch

    paper = params.get("mode", "paper") == "paper"
    cfg = AlpacaConfig.from_env(paper=paper, live_confirmed=not paper,
                                journal=store / "live" / f"journal-{params.get('mode', 'paper')}.sqlite")  # fmt: skip
    report = kill_switch(cfg, flatten=bool(params.get("flatten")))
    for line in report.done:
        out({"event": "log", "message": line})
    if report.error is not None:
        raise report.error
    return None


def check_backtest(store: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The request as the workflow resolves it (model version, dates); reads, never writes."""
    from workflows.backtest import BacktestConfig, plan_backtest

    out: dict[str, Any] = plan_backtest(store, BacktestConfig.from_dict(params)).config.to_dict()
    return out


def check_train(store: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The request with its model name; the preset and every symbol must exist."""
    from feeds.store import ParquetStore
    from mlmodels.nets.model import get_architecture
    from workflows.train import TrainRunConfig

    cfg = TrainRunConfig.from_dict(params)
    resolved = cfg.resolved()
    get_architecture(resolved.arch)
    for sym in [*resolved.symbols, *([resolved.index] if resolved.index else [])]:
        ParquetStore(store).read(sym, resolved.timeframe)  # names the way to get a missing one
    return {**cfg.to_dict(), "name": resolved.name}


CHECKS: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "backtest": check_backtest,
    "train": check_train,
}


def field_of(err: Exception) -> str | None:
    """The request field an error is about (the API's 422 names it)."""
    from core.errors import ModelNotFound, SymbolNotFound

    if isinstance(err, ModelNotFound):
        return "model"
    if isinstance(err, SymbolNotFound):
        return "symbols"
    head = str(err).split(":", 1)[0].strip()
    return head if head.isidentifier() else None


def check(request: dict[str, Any]) -> int:
    """Check a request the way its workflow will (the API's 422 comes from here, so the
    dashboard's own process never loads torch); prints one ``accepted`` or ``refused`` event."""
    try:
        params = CHECKS[request["kind"]](Path(request["store"]), request["params"])
    except UserError as err:
        emit({"event": "refused", "message": str(err), "field": field_of(err)})
        return 2
    emit({"event": "accepted", "params": params})
    return 0


RUNNERS: dict[str, Callable[[Path, dict[str, Any], str | None, Emit], Any]] = {
    "backtest": run_backtest,
    "train": run_train,
    "import": run_import,
    "kill": run_kill,
    "download": run_download,
}


def _die_with_parent() -> None:
    """Ask Linux for SIGKILL when the dashboard goes; exit if it already went."""
    parent = int(os.environ.get("BTML_JOB_PARENT", "0"))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:
        os._exit(1)


def _cancel_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    _die_with_parent()
    _cancel_on_sigterm()
    request = json.loads(sys.stdin.read())
    if request.get("check_only"):
        return check(request)
    import torch

    torch.set_num_threads(int(request.get("threads", 1)))
    runner = RUNNERS[request["kind"]]
    try:
        run_id = runner(Path(request["store"]), request["params"], request.get("db_url"), emit)
    except KeyboardInterrupt:
        emit({"event": "error", "message": "cancelled", "user_error": False, "cancelled": True})
        return 130
    except UserError as err:
        emit({"event": "error", "message": str(err), "user_error": True})
        return 2
    except Exception as err:  # reported to the dashboard; the traceback goes to the job's log
        import traceback

        traceback.print_exc()
        emit({"event": "error", "message": f"{type(err).__name__}: {err}", "user_error": False})
        return 1
    emit({"event": "done", "run_id": run_id})
    return 0


if __name__ == "__main__":
    sys.exit(main())
