"""What a TorchServe instance is configured with: ``ServerConfig`` and the files it writes.

``config.properties`` binds every address to 127.0.0.1, turns token authorization on, limits
``allowed_urls`` to the model store, and sets ``blacklist_env_vars`` so that no variable named
like a secret reaches a Python worker. ``log4j2.xml`` rolls TorchServe's logs over by size.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.config import DataConfig
from core.errors import ConfigError

SECRET_ENV = r"(?i).*(KEY|SECRET|TOKEN|PASSW|CREDENTIAL|APCA_|ALPACA_|PRIVATE).*"
"""Names of environment variables that look like secrets (Java and Python regex, full match)."""

SOCKET_PATH_MAX = 100
"""A worker's Unix socket path must fit in ``sun_path`` (108 bytes on Linux)."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig(DataConfig):
    """Where TorchServe lives and how it is configured (all addresses are 127.0.0.1).

    ``registry`` is the model registry whose cards pin each archive's sha256 (default: the
    ``models`` folder beside ``home``, as in ``{store}/serving`` and ``{store}/models``).
    ``log_max_bytes`` and ``log_backups`` bound each log: it rolls over at that size and the
    oldest of ``log_backups`` old files is deleted.
    """

    home: Path
    registry: Path | None = None
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    netty_threads: int = 0  # 0 = the number of cores
    job_queue_size: int = 100
    response_timeout_s: int = 60
    max_request_mb: int = 64
    token_expiration_min: float = 7 * 24 * 60
    startup_timeout_s: float = 180.0
    enable_model_api: bool = False
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5

    def __post_init__(self) -> None:
        # absolute: TorchServe runs with its home as the working directory
        object.__setattr__(self, "home", Path(self.home).expanduser().absolute())
        if self.registry is not None:
            object.__setattr__(self, "registry", Path(self.registry).expanduser().absolute())
        ports = (self.inference_port, self.management_port, self.metrics_port)
        if any(not 1024 <= p <= 65535 for p in ports) or len(set(ports)) != 3:
            raise ConfigError(
                f"ports must be three different numbers in [1024, 65535], got {ports}"
            )
        if self.job_queue_size < 1 or self.response_timeout_s < 1 or self.max_request_mb < 1:
            raise ConfigError("job_queue_size, response_timeout_s and max_request_mb must be >= 1")
        if self.token_expiration_min <= 0:
            raise ConfigError(f"token_expiration_min must be > 0, got {self.token_expiration_min}")
        if self.log_max_bytes < 4096 or not 1 <= self.log_backups <= 100:
            raise ConfigError(
                f"log_max_bytes must be >= 4096 and log_backups in [1, 100], got "
                f"{self.log_max_bytes} and {self.log_backups}"
            )

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
    def registry_root(self) -> Path:
        return self.registry or self.home.parent / "models"

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    @property
    def state_file(self) -> Path:
        return self.home / "server.json"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def temp_dir(self) -> Path:
        """This instance's own TEMP: worker sockets and unpacked archives (``{home}/tmp``, or
        a short private folder when the socket path would not fit in ``sun_path``)."""
        own = self.home / "tmp"
        if len(str(own / ".ts.sock.65535")) <= SOCKET_PATH_MAX:
            return own
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:16]
        return Path("/tmp") / f"btml-ts-{os.getuid()}-{digest}"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def properties(self, archives: list[str]) -> str:
        """The ``config.properties`` text for a server loading ``archives`` at start."""
        store = self.model_store.resolve()
        threads = str(self.netty_threads or os.cpu_count() or 1)
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
            "token_expiration_min": f"{self.token_expiration_min:g}",
            "allowed_urls": "file://" + re.escape(str(store)) + "/.*",
            "blacklist_env_vars": SECRET_ENV,
            "number_of_netty_threads": threads,
            "netty_client_threads": threads,
            "job_queue_size": str(self.job_queue_size),
            "default_response_timeout": str(self.response_timeout_s),
            "max_request_size": str(self.max_request_mb * 1024 * 1024),
            "max_response_size": str(self.max_request_mb * 1024 * 1024),
            "install_py_dep_per_model": "false",
            "enable_envvars_config": "false",
            "disable_system_metrics": "true",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def log4j(self) -> str:
        """The ``log4j2.xml`` text: logs roll over at ``log_max_bytes``."""
        return LOG4J.replace("@MAX_BYTES@", str(self.log_max_bytes)).replace(
            "@BACKUPS@", str(self.log_backups)
        )


_ROLLING = """    <RollingFile name="@NAME@" fileName="${env:LOG_LOCATION:-logs}/@NAME@.log"
                 filePattern="${env:LOG_LOCATION:-logs}/@NAME@.log.%i">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="@MAX_BYTES@"/></Policies>
      <DefaultRolloverStrategy max="@BACKUPS@" fileIndex="min"/>
    </RollingFile>
"""

LOG4J = (
    """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
"""
    + _ROLLING.replace("@NAME@", "model_log")
    + _ROLLING.replace("@NAME@", "ts_log")
    + """  </Appenders>
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
    <Root level="warn"><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""
)
"""TorchServe's logging: every appender rolls over by size (``ServerConfig.log4j`` fills in
the size and count); no line per request in the access log or metrics (the metrics API still
counts), so logging adds little to each request's latency."""
