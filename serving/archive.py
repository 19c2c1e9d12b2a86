"""Build TorchServe ``.mar`` archives of registered models, and check them before each load.

An archive holds the weights (``weights.pt``, loaded with ``weights_only=True``), the model
card, the per-model config (dynamic batching, workers, handler threads) and a one-class handler
entry file (``serving/ts_entry.py``) that imports the installed ``SignalHandler``; a model
trained on the user's own features also carries the copy of their module
(``features_module.py``), which the handler checks against the card's sha256 on load.
Archives are named ``NAME.vVERSION.mar``; TorchServe reads the name and version from the
archive's manifest, so several versions of one model can sit in one model store.

Each archive's sha256 is pinned in the model registry (the ``archives`` of the model card
beside the checkpoint), not in the model store: ``verify_archive`` compares against that pin
before every load (start, register, scale). The ``.sha256`` file written beside the archive is
for ``sha256sum -c`` only and is never trusted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.config import DataConfig
from core.errors import ConfigError, CorruptFileError, DataError, ModelNotFound, StoreError
from mlmodels.registry import CARD_FILE, WEIGHTS_FILE, ModelRegistry
from mlmodels.user_features import verify_copy

ENTRY = Path(__file__).with_name("ts_entry.py")


@dataclass(frozen=True, kw_only=True)
class ModelServeConfig(DataConfig):
    """Per-model serving settings written into the archive's model config.

    ``batch_size``/``max_batch_delay_ms`` turn on TorchServe's dynamic batching: a worker waits
    up to the delay to gather up to ``batch_size`` requests into one forward pass. The defaults
    (1, 0 ms) suit one client that batches its own windows, as the strategy does. One torch
    thread per worker measured fastest on 2 cores, where the Java frontend needs the other.
    """

    batch_size: int = 1
    max_batch_delay_ms: int = 0
    workers: int = 1
    threads: int = 1  # torch threads per worker; 0 = cores // workers
    response_timeout_s: int = 60
    max_windows: int = 4096

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 1024:
            raise ConfigError(f"batch_size must be in [1, 1024], got {self.batch_size}")
        if not 0 <= self.max_batch_delay_ms <= 10_000:
            raise ConfigError(
                f"max_batch_delay_ms must be in [0, 10000], got {self.max_batch_delay_ms}"
            )
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be in [1, 64], got {self.workers}")
        if self.threads < 0 or self.response_timeout_s < 1 or self.max_windows < 1:
            raise ConfigError("threads must be >= 0, response_timeout_s >= 1, max_windows >= 1")

    def yaml(self) -> str:
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
        return (
            f"minWorkers: {self.workers}\nmaxWorkers: {self.workers}\n"
            f"batchSize: {self.batch_size}\nmaxBatchDelay: {self.max_batch_delay_ms}\n"
            f"responseTimeout: {self.response_timeout_s}\n"
            f"handler:\n  threads: {threads}\n  max_windows: {self.max_windows}\n"
        )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def archive_name(name: str, version: int) -> str:
    return f"{name}.v{version}.mar"


def parse_archive_name(path: Path) -> tuple[str, int]:
    """``NAME.vVERSION.mar`` -> (name, version)."""
    name, _, ver = path.name.removesuffix(".mar").rpartition(".v")
    if not path.name.endswith(".mar") or not name or not ver.isdigit():
        raise ConfigError(f"{path}: archives are named NAME.vVERSION.mar (btml serve archive)")
    return name, int(ver)


def archiver_command() -> list[str]:
    """``torch-model-archiver`` next to this Python, or on PATH."""
    exe = Path(sys.executable).with_name("torch-model-archiver")
    found = str(exe) if exe.exists() else shutil.which("torch-model-archiver")
    if not found:
        raise ConfigError("torch-model-archiver is not installed; pip install torch-model-archiver")
    return [found]


def build_archive(
    registry: ModelRegistry, ref: str, out_dir: Path, cfg: ModelServeConfig | None = None
) -> Path:
    """Archive model ``ref`` (``name[:version]``) into ``out_dir``; returns the ``.mar`` path.

    The archive is built in a temporary folder, its sha256 pinned in the registry's model card,
    and only then moved into place, so a half-built or unpinned archive never appears.
    """
    cfg = cfg or ModelServeConfig()
    src = registry.path(ref)
    card = registry.card(ref)
    extra = [src / CARD_FILE]
    if card.feature_module:  # refuse to archive a missing or altered copy
        extra.append(verify_copy(card.feature_module, src, card.ref))
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / archive_name(card.name, card.version)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        cfg_file = Path(tmp) / "model-config.yaml"
        cfg_file.write_text(cfg.yaml())
        cmd = archiver_command() + [
            "--model-name", card.name,
            "--version", str(card.version),
            "--serialized-file", str(src / WEIGHTS_FILE),
            "--handler", str(ENTRY),
            "--extra-files", ",".join(str(p) for p in extra),
            "--config-file", str(cfg_file),
            "--export-path", tmp,
            "--force",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        built = Path(tmp) / f"{card.name}.mar"
        if proc.returncode != 0 or not built.exists():
            raise StoreError(
                f"torch-model-archiver failed for {card.ref}: {(proc.stderr or proc.stdout).strip()[-800:]}"
            )
        digest = sha256_file(built)
        registry.record_archive(card.ref, final, digest)
        sha_tmp = Path(tmp) / "sha256"
        sha_tmp.write_text(f"{digest}  {final.name}\n")
        os.replace(sha_tmp, final.with_name(final.name + ".sha256"))
        os.replace(built, final)
    return final


def verify_archive(path: Path, registry: ModelRegistry) -> str:
    """Check ``path`` against the sha256 pinned in ``registry``; returns the digest.

    Raises ``CorruptFileError`` naming the file and the expected and actual hashes when they
    differ, or saying how to rebuild when the registry pins nothing for this archive.
    """
    if not path.exists():
        raise StoreError(f"archive {path} does not exist; build it with: btml serve archive")
    name, version = parse_archive_name(path)
    ref = f"{name}:{version}"
    try:
        card_file = registry.path(ref) / CARD_FILE
        expected = registry.card(ref).archives.get(str(path.resolve()))
    except (ModelNotFound, DataError) as err:
        raise CorruptFileError(
            path, f"{path}: cannot check it against the model registry {registry.root} ({err})"
        ) from err
    if not expected:
        raise CorruptFileError(
            path,
            f"{path}: {card_file} pins no sha256 for this archive; rebuild it from the registry "
            f"with: btml serve archive {ref}",
        )
    actual = sha256_file(path)
    if actual != expected:
        raise CorruptFileError(
            path,
            f"{path}: expected sha256 {expected} (pinned in {card_file}), found {actual}; the "
            f"archive was changed or replaced: refusing to load it (rebuild: btml serve archive {ref})",
        )
    return actual
