"""Start, check and stop a locked-down TorchServe that serves archived models.

Everything lives in one home folder (default ``{store}/serving``)::

    model-store/      NAME.vN.mar (sha256 pinned in the registry's model card)
    config.properties written at every start (see ``ServerConfig.properties``)
    log4j2.xml        size-based log rollover (see ``ServerConfig.log4j``)
    key_file.json     TorchServe's tokens (mode 0600); clients read the inference key here
    logs/             TorchServe's logs (rolled over by size) and the launcher's output
    tmp/              this instance's TEMP: worker sockets and unpacked archives
    server.json       pid, start time and command line, ports and models of the running server

Safe defaults: every address on 127.0.0.1, token authorization on, the model-registration API
off (models load at start), ``allowed_urls`` limited to the local model store, the job queue,
request size and response timeout bounded, netty threads sized for the cores. TorchServe gets
an allow-listed environment (no secrets) and its own TEMP. Every archive is checked against the
sha256 pinned in the registry before it loads (start, ``register``, ``scale``). The server runs
in its own process group; ``stop`` signals it only while the recorded pid is still the process
that was started (same start time and command line), so a stale ``server.json`` never ends an
unrelated process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import requests

from core.errors import BtmlError, ConfigError
from mlmodels.registry import ModelRegistry
from serving.archive import archive_name, parse_archive_name, verify_archive
from serving.procs import (
    check_ports_free,
    check_python_deps,
    find_java,
    group_pids,
    identity,
    private_dir,
    rotate_file,
    server_env,
)
from serving.server_config import LOG4J, ServerConfig
from serving.state import (
    ServerState,
    Shutdown,
    inspect_state,
    read_state,
    shutdown,
    stale_reason,
    stop,
    write_state,
)

__all__ = [
    "LOG4J",
    "READY",
    "ServerConfig",
    "ServerState",
    "ServingError",
    "Shutdown",
    "find_java",
    "group_pids",
    "log_tail",
    "read_key",
    "read_state",
    "register",
    "renew_token",
    "scale",
    "set_default",
    "shutdown",
    "stale_reason",
    "start",
    "status",
    "stop",
    "wait_ready",
]

READY = "READY"


class ServingError(BtmlError):
    """TorchServe could not be started, or did not get its models ready."""


def read_key(cfg: ServerConfig, kind: str = "inference") -> str:
    """The current ``inference``, ``management`` or ``API`` token from the server's key file."""
    try:
        return str(json.loads(cfg.key_file.read_text())[kind]["key"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ServingError(
            f"cannot read the {kind} token from {cfg.key_file} ({err}); is the server running?"
        ) from err


def _manifest_models(archives: list[Path]) -> dict[str, list[int]]:
    models: dict[str, list[int]] = {}
    for a in archives:
        name, ver = parse_archive_name(a)
        models.setdefault(name, []).append(ver)
    return {k: sorted(v) for k, v in models.items()}


def _check_archive(cfg: ServerConfig, archive: Path) -> None:
    if archive.parent.resolve() != cfg.model_store.resolve():
        raise ConfigError(f"{archive} is not in the model store {cfg.model_store}")
    verify_archive(archive, ModelRegistry(cfg.registry_root))


def start(
    cfg: ServerConfig, archives: list[Path], defaults: dict[str, int] | None = None
) -> ServerState:
    """Start TorchServe with ``archives`` (in ``cfg.model_store``) and wait until all are READY.

    Refuses to start when a server already runs from this home, an archive does not match the
    sha256 pinned in the registry, a port is taken, or Java or PyYAML is missing. On a failed
    start the server is stopped and the error carries the end of its log.
    """
    if not archives:
        raise ConfigError("no models to serve; build one with: btml serve archive MODEL")
    running = read_state(cfg)
    if running:
        raise ServingError(
            f"a server from {cfg.home} is already running (pid {running.pid}); btml serve stop"
        )
    for a in archives:
        _check_archive(cfg, a)
    env = server_env(cfg, dict(os.environ), find_java())
    check_python_deps()
    check_ports_free(cfg)
    _prepare_home(cfg, [a.name for a in archives])
    proc = _launch(cfg, env)
    state = _record(cfg, proc.pid, archives, defaults)
    try:
        wait_ready(cfg, state, proc)
        for name, ver in state.defaults.items():
            set_default(cfg, name, ver)
    except BaseException:
        stop(cfg)
        raise
    return state


def _prepare_home(cfg: ServerConfig, archives: list[str]) -> None:
    """Config files, log folder (the launcher's old output rolled over) and a clean TEMP."""
    cfg.logs.mkdir(parents=True, exist_ok=True)
    private_dir(cfg.temp_dir)
    shutil.rmtree(cfg.temp_dir / "models", ignore_errors=True)  # unpacked by a dead server
    (cfg.home / "config.properties").write_text(cfg.properties(archives))
    (cfg.home / "log4j2.xml").write_text(cfg.log4j())
    rotate_file(cfg.logs / "server.out", cfg.log_max_bytes, cfg.log_backups)


def _launch(cfg: ServerConfig, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [_torchserve(), "--start", "--foreground", "--ncs", "--model-store",
           str(cfg.model_store), "--ts-config", "config.properties", "--log-config", "log4j2.xml"]  # fmt: skip
    with open(cfg.logs / "server.out", "ab") as out:
        return subprocess.Popen(
            cmd, cwd=cfg.home, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


def _record(
    cfg: ServerConfig, pid: int, archives: list[Path], defaults: dict[str, int] | None
) -> ServerState:
    models = _manifest_models(archives)
    ident = identity(pid)
    state = ServerState(
        pid=pid, pgid=pid, inference_port=cfg.inference_port,
        management_port=cfg.management_port, metrics_port=cfg.metrics_port, models=models,
        defaults={**{n: v[-1] for n, v in models.items()}, **(defaults or {})},
        started_at=time.time(), start_time=ident.start_time if ident else 0,
        cmdline=list(ident.cmdline) if ident else [],
    )  # fmt: skip
    write_state(cfg, state)
    return state


def _torchserve() -> str:
    exe = Path(sys.executable).with_name("torchserve")
    found = str(exe) if exe.exists() else shutil.which("torchserve")
    if not found:
        raise ConfigError("TorchServe is not installed: pip install torchserve")
    return found


def _refused(r: requests.Response) -> bool:
    """TorchServe 0.12 answers a wrong or expired token with 400 InvalidKeyException."""
    return r.status_code == 401 or (r.status_code == 400 and "InvalidKeyException" in r.text)


def _mgmt(cfg: ServerConfig, method: str, path: str, timeout: float = 5.0) -> requests.Response:
    """A management API call; an expired management key is renewed once (with the API key)."""

    def call() -> requests.Response:
        headers = {"Authorization": f"Bearer {read_key(cfg, 'management')}"}
        return requests.request(method, cfg.management_url + path, headers=headers, timeout=timeout)

    r = call()
    if _refused(r):
        _renew(cfg, "management")
        r = call()
    return r


def wait_ready(cfg: ServerConfig, state: ServerState, proc: subprocess.Popen[bytes] | None) -> None:
    """Poll the management API until every model version has a READY worker."""
    deadline = time.monotonic() + cfg.startup_timeout_s
    pending = {(n, v) for n, vs in state.models.items() for v in vs}
    while pending:
        if proc is not None and proc.poll() is not None:
            raise ServingError(
                f"TorchServe exited with code {proc.returncode} (logs in {cfg.logs}):\n"
                + log_tail(cfg)
            )
        if time.monotonic() > deadline:
            left = ", ".join(f"{n}:{v}" for n, v in sorted(pending))
            raise ServingError(
                f"models not READY after {cfg.startup_timeout_s:.0f} s: {left} (logs in "
                f"{cfg.logs})\n{log_tail(cfg)}"
            )
        for name, ver in sorted(pending):
            if _version_ready(cfg, name, ver):
                pending.discard((name, ver))
        if pending:
            time.sleep(0.25)


def _version_ready(cfg: ServerConfig, name: str, ver: int) -> bool:
    if not cfg.key_file.exists():
        return False
    try:
        r = _mgmt(cfg, "GET", f"/models/{name}/{ver}", timeout=2.0)
    except (requests.RequestException, ServingError):
        return False
    if r.status_code != 200:
        return False
    workers = [w for m in r.json() for w in m.get("workers", [])]
    return bool(workers) and all(w.get("status") == READY for w in workers)


def _running(cfg: ServerConfig) -> tuple[ServerConfig, ServerState]:
    """``cfg`` at the running server's ports, and its state; ``ServingError`` if none runs."""
    state, stale = inspect_state(cfg)
    if state is None:
        why = f" (stale state file: {stale})" if stale else ""
        raise ServingError(f"no TorchServe is running from {cfg.home}{why}; btml serve start")
    return _at_state_ports(cfg, state), state


def set_default(cfg: ServerConfig, name: str, version: int) -> None:
    """Make ``version`` the one ``/predictions/{name}`` serves."""
    cfg, state = _running(cfg)
    r = _mgmt(cfg, "PUT", f"/models/{name}/{version}/set-default")
    if r.status_code != 200:
        raise ServingError(f"setting {name}:{version} as default failed: {r.text.strip()}")
    state.defaults[name] = version
    write_state(cfg, state)


def register(cfg: ServerConfig, archive: Path, workers: int = 1) -> None:
    """Load one more archive into the running server (needs ``enable_model_api``), after
    checking it against the sha256 pinned in the registry."""
    cfg, state = _running(cfg)
    _check_archive(cfg, archive)
    query = f"url={archive.name}&initial_workers={workers}&synchronous=true"
    r = _mgmt(cfg, "POST", f"/models?{query}", timeout=cfg.startup_timeout_s)
    if r.status_code != 200:
        raise ServingError(
            f"registering {archive.name} failed: HTTP {r.status_code} {r.text.strip()}"
        )
    name, ver = parse_archive_name(archive)
    state.models[name] = sorted({*state.models.get(name, []), ver})
    state.defaults.setdefault(name, ver)
    write_state(cfg, state)


def scale(cfg: ServerConfig, name: str, version: int, workers: int) -> None:
    """Run ``workers`` workers for ``name:version``, after checking its archive's pin again."""
    if not 1 <= workers <= 64:
        raise ConfigError(f"workers must be in [1, 64], got {workers}")
    cfg, _ = _running(cfg)
    _check_archive(cfg, cfg.model_store / archive_name(name, version))
    query = f"min_worker={workers}&max_worker={workers}&synchronous=true"
    r = _mgmt(cfg, "PUT", f"/models/{name}/{version}?{query}", timeout=cfg.startup_timeout_s)
    if r.status_code not in (200, 202):
        raise ServingError(
            f"scaling {name}:{version} failed: HTTP {r.status_code} {r.text.strip()}"
        )


def renew_token(cfg: ServerConfig, kind: str = "inference") -> None:
    """Have TorchServe issue a new ``inference`` or ``management`` key, valid for
    ``token_expiration_min`` from now, written to its key file (clients re-read it)."""
    if kind not in ("inference", "management"):
        raise ConfigError(f"token kind must be inference or management, got {kind!r}")
    cfg, _ = _running(cfg)
    _renew(cfg, kind)


def _renew(cfg: ServerConfig, kind: str) -> None:
    headers = {"Authorization": f"Bearer {read_key(cfg, 'API')}"}
    url = f"{cfg.management_url}/token?type={kind}"
    r = requests.get(url, headers=headers, timeout=10.0)
    if r.status_code != 200:
        raise ServingError(
            f"renewing the {kind} token failed: HTTP {r.status_code} {r.text.strip()}"
        )


def _at_state_ports(cfg: ServerConfig, state: ServerState) -> ServerConfig:
    """``cfg`` with the ports the running server was started on (a later command may not know)."""
    return replace(
        cfg,
        inference_port=state.inference_port,
        management_port=state.management_port,
        metrics_port=state.metrics_port,
    )


def status(cfg: ServerConfig) -> dict[str, Any]:
    """The server's pid, ports and each model version's workers and default flag; ``stale``
    says why a ``server.json`` that names no running server of ours is stale."""
    state, stale = inspect_state(cfg)
    if state is None:
        return {"running": False, "home": str(cfg.home), "stale": stale}
    cfg = _at_state_ports(cfg, state)
    models: dict[str, Any] = {}
    for name in state.models:
        try:
            r = _mgmt(cfg, "GET", f"/models/{name}/all")
            rows = r.json() if r.status_code == 200 else []
        except (requests.RequestException, ValueError, ServingError):
            rows = []
        models[name] = [
            {
                "version": int(m["modelVersion"]),
                "default": int(m["modelVersion"]) == state.defaults.get(name),
                "workers": [w.get("status") for w in m.get("workers", [])],
                "batch_size": m.get("batchSize"),
                "max_batch_delay_ms": m.get("maxBatchDelay"),
            }
            for m in rows
        ]
    return {"running": True, "home": str(cfg.home), **asdict(state), "status": models}


def log_tail(cfg: ServerConfig, lines: int = 30) -> str:
    """The last lines of TorchServe's logs (errors first), for error messages."""
    out = []
    for name in ("model_log.log", "ts_log.log", "server.out"):
        p = cfg.logs / name
        if p.exists():
            tail = p.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {p} ---\n" + "\n".join(tail))
    return "\n".join(out) or f"(no logs in {cfg.logs})"
