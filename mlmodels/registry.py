"""Model cards and the model registry.

Layout: ``{root}/{name}/v{N}/weights.pt`` (a plain ``state_dict``, loaded with
``torch.load(weights_only=True)``: no pickled code runs) beside ``model_card.json``, which
holds everything needed to rebuild, reproduce and serve the model: architecture preset and
config, feature list (and selection), scaler statistics, window, horizons, label definitions,
the training data hash and date ranges, metrics per split, the code version, and the id of
the run that trained it (``training_run``; absent from cards written before runs were
recorded, which load with ``None``). Versions increase from 1; ``name`` alone means the
latest. Serving reads the card; nothing is guessed.

``labels`` holds the label config, ``price_from`` and ``trading_from`` included (where the
price and trading heads' returns start: :mod:`mlmodels.labels`); cards written before those
existed load them as ``close`` (:meth:`ModelCard.label_cfg`). A model trained with the user's
own features has ``feature_module`` (:meth:`mlmodels.user_features.UserFeatures.card`: the
spec, the copy's file, its sha256, names, warm-up, whether the built-in features come first)
and the module's source beside the weights (``features_module.py``);
:meth:`ModelRegistry.user_features` loads that copy back and refuses a missing or altered one.
Other cards have ``feature_module`` None.

``metrics`` holds ``val`` and ``test`` (every head's point figures), ``baselines_test``
(zero return, majority class, logistic / linear) and, from cards written since, ``report``:
the test split per head beside its naive baseline and the trained baselines (logistic /
ridge, LightGBM) with block-bootstrap intervals, a ``comparison`` row per head and metric
(the network's value, each baseline's, ``beat``) and the ``edge`` summary
(:func:`mlmodels.head_metrics.head_report`). Older cards have no ``report`` and load as
they are (:attr:`ModelCard.report` is then None).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ConfigError, DataError, ModelNotFound
from mlmodels.labels import LabelConfig

if TYPE_CHECKING:  # torch is imported where weights are read or written: reading cards needs none
    from torch import nn

    from mlmodels.dataset import Scaler
    from mlmodels.nets.model import ModelConfig
    from mlmodels.selection import Selection
    from mlmodels.user_features import UserFeatures

ENSEMBLE_ARCH = "ensemble"
CARD_FILE = "model_card.json"
CHAMPION_FILE = "champion.json"  # {name}/champion.json: the promoted version and the earlier ones
WEIGHTS_FILE = "weights.pt"
CARD_SCHEMA = 1


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("backtrader-ml")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


def data_hash(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' bytes (the training inputs and targets)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What a checkpoint is and how it was made."""

    name: str
    version: int = 0
    arch: str
    model_config: dict[str, Any]
    features: list[str]
    selection: dict[str, Any] | None = None
    scaler: dict[str, Any]
    window: int
    horizons: list[int] = field(default_factory=lambda: [1, 4, 24])
    labels: dict[str, Any] = field(default_factory=dict)
    price_scale: list[float] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    index: str | None = None
    timeframe: str = "1Day"
    data_hash: str = ""
    date_ranges: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    parameters: int = 0
    code_version: str = ""
    created_at: str = ""
    archives: dict[str, str] = field(default_factory=dict)  # served .mar path -> its sha256
    training_run: str | None = None  # the run registry's id of the run that trained it
    feature_module: dict[str, Any] | None = None  # the user's features module, if any
    schema: int = CARD_SCHEMA

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def report(self) -> dict[str, Any] | None:
        """The out-of-sample report (None on cards written before it existed)."""
        report = self.metrics.get("report")
        return report if isinstance(report, dict) else None

    @property
    def edge(self) -> str | None:
        """The report's summary line: the leading edge and its interval, or "no edge"."""
        return self.report["edge"]["summary"] if self.report else None

    @property
    def streaming(self) -> bool:
        """Whether the network carries its state from bar to bar (a streaming preset)."""
        return bool(self.model_config.get("streaming", False))

    @property
    def is_ensemble(self) -> bool:
        return self.arch == ENSEMBLE_ARCH

    def model_cfg(self) -> ModelConfig:
        from mlmodels.nets.model import ModelConfig

        return ModelConfig.from_dict(self.model_config)

    def selection_obj(self) -> Selection | None:
        """The feature selection the model reads through (None: the features as they are)."""
        from mlmodels.selection import Selection

        if not self.selection:
            return None
        sel = self.selection
        return Selection(
            **{**sel, "inputs": tuple(sel["inputs"]), "outputs": tuple(sel["outputs"])}
        )

    def label_cfg(self) -> LabelConfig:
        """The labels it was trained on (``close`` for both head groups on older cards)."""
        return LabelConfig.from_card(self.labels)

    def scaler_obj(self) -> Scaler:
        from mlmodels.dataset import Scaler

        return Scaler.from_dict(self.scaler)

    def check_features(self, names: list[str] | tuple[str, ...]) -> None:
        """Refuse data whose feature list differs from the one the model was trained on."""
        if list(names) != list(self.features):
            missing = [n for n in self.features if n not in names]
            extra = [n for n in names if n not in self.features]
            raise DataError(
                f"model {self.ref} expects {len(self.features)} features, the data has {len(names)}"
                f" (missing: {', '.join(missing) or '-'}; unexpected: {', '.join(extra) or '-'};"
                " or a different order)"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, default=float)

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        try:
            d = json.loads(path.read_text())
            if d.get("schema") != CARD_SCHEMA:
                raise DataError(f"{path}: model card schema {d.get('schema')} is not {CARD_SCHEMA}")
            return cls(**d)
        except (OSError, ValueError, TypeError) as err:
            raise DataError(f"{path}: not a valid model card ({err})") from err


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name:version`` -> (name, version or None for the latest)."""
    name, _, ver = ref.partition(":")
    if not name:
        raise ConfigError(f"model reference {ref!r} has no name")
    if ver and not ver.lstrip("v").isdigit():
        raise ConfigError(f"model version must be a number, got {ver!r} in {ref!r}")
    return name, int(ver.lstrip("v")) if ver else None


class ModelRegistry:
    """Versioned models under ``root`` (default ``{store}/models``).

    ``name`` alone means the *champion* (the version ``btml models promote`` switched to,
    kept in ``{name}/champion.json``) once one has been promoted, else the latest version."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(
            int(p.name[1:])
            for p in d.glob("v*")
            if p.name[1:].isdigit() and (p / CARD_FILE).exists()
        )

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*") if p.is_dir() and self.versions(p.name))

    def path(self, ref: str) -> Path:
        name, ver = parse_ref(ref)
        vs = self.versions(name)
        if not vs:
            known = ", ".join(self.names()) or "none yet"
            raise ModelNotFound(
                f"no model called {name!r} in {self.root} (known: {known}); train one with btml train"
            )
        if ver is None:
            ver = self.champion(name) or vs[-1]
        if ver not in vs:
            raise ModelNotFound(
                f"model {name} has no version {ver}; versions: {', '.join(map(str, vs))}"
            )
        return self.root / name / f"v{ver}"

    def champion_record(self, name: str) -> dict[str, Any]:
        """``{"version": N or None, "history": [...]}``: the champion and every switch so far
        (each ``{"version", "previous", "action", "at", "run"}``, oldest first)."""
        path = self.root / name / CHAMPION_FILE
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return {"version": None, "history": []}
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a valid champion record ({err})") from err
        if not isinstance(record, dict) or not isinstance(record.get("history"), list):
            raise DataError(f"{path}: not a valid champion record (no history list)")
        return record

    def champion(self, name: str) -> int | None:
        """The promoted version of ``name`` (None: never promoted; ``name`` means the latest)."""
        version = self.champion_record(name).get("version")
        return int(version) if version is not None else None

    def set_champion(self, name: str, version: int, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Make ``name:version`` the champion, appending ``entry`` to the history (atomic)."""
        if version not in self.versions(name):
            raise ModelNotFound(f"model {name} has no version {version}")
        record = self.champion_record(name)
        record = {"version": version, "history": [*record["history"], dict(entry)]}
        path = self.root / name / CHAMPION_FILE
        tmp = path.with_name(f"{CHAMPION_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
        return record

    def register(
        self, model: nn.Module, card: ModelCard, files: Mapping[str, bytes] | None = None
    ) -> ModelCard:
        """Store weights, ``files`` (name -> bytes, e.g. the features module's source) and the
        card as the next version of ``card.name``; returns the final card."""
        if "/" in card.name or ":" in card.name or not card.name:
            raise ConfigError(f"model name must be non-empty without '/' or ':', got {card.name!r}")
        for fname in files or {}:
            if Path(fname).name != fname or fname in (CARD_FILE, WEIGHTS_FILE, ""):
                raise ConfigError(f"cannot store {fname!r} beside a model: give a plain file name")
        (self.root / card.name).mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # another process may take the same number: mkdir is the arbiter
            ver = (self.versions(card.name) or [0])[-1] + 1
            d = self.root / card.name / f"v{ver}"
            try:
                d.mkdir()
                break
            except FileExistsError:
                continue
        card = dataclasses.replace(card, version=ver)
        import torch

        torch.save(model.state_dict(), d / WEIGHTS_FILE)
        for fname, data in (files or {}).items():
            (d / fname).write_bytes(data)
        tmp = d / (CARD_FILE + ".tmp")
        tmp.write_text(card.to_json())
        os.replace(tmp, d / CARD_FILE)  # the card appears last: a version without one is invisible
        return card

    def card(self, ref: str) -> ModelCard:
        return ModelCard.from_file(self.path(ref) / CARD_FILE)

    def record_archive(self, ref: str, archive: Path, sha256: str) -> ModelCard:
        """Pin the sha256 of a serving archive built from ``ref`` in its card (by resolved path)."""
        d = self.path(ref)
        card = ModelCard.from_file(d / CARD_FILE)
        pins = {**card.archives, str(Path(archive).resolve()): sha256}
        card = dataclasses.replace(card, archives=pins)
        tmp = d / f"{CARD_FILE}.{os.getpid()}.tmp"
        tmp.write_text(card.to_json())
        os.replace(tmp, d / CARD_FILE)
        return card

    def user_features(self, ref: str) -> UserFeatures | None:
        """The features module model ``ref`` was trained with, loaded from its verified copy
        (None for a model on the built-in features only)."""
        from mlmodels.user_features import from_card

        d = self.path(ref)
        card = ModelCard.from_file(d / CARD_FILE)
        return from_card(card.feature_module, d, card.ref) if card.feature_module else None

    def load(self, ref: str, device: str = "cpu") -> tuple[nn.Module, ModelCard]:
        """Rebuild the network from the card and load its weights (no pickled code)."""
        d = self.path(ref)
        card = ModelCard.from_file(d / CARD_FILE)
        return load_weights(d / WEIGHTS_FILE, card, device), card


def load_weights(path: Path, card: ModelCard, device: str = "cpu") -> nn.Module:
    """Build ``card``'s network and load the state dict at ``path`` into it, strictly."""
    import torch

    from mlmodels.nets.model import build_model

    model: nn.Module
    if card.is_ensemble:
        from mlmodels.ensemble import build_ensemble

        model = build_ensemble(card.model_config)
    else:
        model = build_model(card.model_cfg())
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, pickle.UnpicklingError) as err:
        raise DataError(
            f"{path}: corrupt or foreign checkpoint for {card.name}:{card.version} ({err})"
        ) from err
    model.eval()
    return model
