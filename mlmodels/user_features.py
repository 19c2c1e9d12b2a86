"""Users' own features: a Python module of feature functions, proven causal before use.

A feature module defines ``FEATURES``, a dict from column name to a function of the bars, and
optionally ``WARMUP``, the bars before the first value (0 by default)::

    # my_features.py
    import pandas as pd

    def range_position(bars: pd.DataFrame, **kwargs) -> pd.Series:
        low, high = bars["low"].rolling(10).min(), bars["high"].rolling(10).max()
        return (bars["close"] - low) / (high - low)

    FEATURES = {"range_pos_10": range_position}
    WARMUP = 9

Each function receives a copy of one symbol's canonical OHLCV frame (``open``, ``high``,
``low``, ``close``, ``volume`` on a UTC ``DatetimeIndex``) and, when it accepts ``index`` or
``**kwargs``, ``index=`` the market index frame or None; it returns one value per bar (a Series
on the frame's index or an array of its length). Names must differ from the built-in features.

:func:`load_feature_module` takes what ``--features-module`` gets: a ``.py`` path, an importable
module name, or the name of an entry point in the ``btml.features`` group (a package declares
``[options.entry_points] btml.features = mine = my_pkg.features``). :meth:`UserFeatures.check`
runs the truncation test (:func:`mlmodels.leakage.truncation_check`) on every function and
raises :class:`~mlmodels.leakage.FeatureLeakError` naming the feature and the first differing
row: training calls it (:func:`load_checked`) before it starts.

A model trained with a module keeps it: :meth:`UserFeatures.card` is the card's
``feature_module`` (the spec given, the copy's file name ``features_module.py``, its sha256,
the feature names, ``WARMUP``, and ``builtin``: whether the built-in features come first or
the module's are the only ones), the registry stores the module's source beside the weights,
and :func:`from_card` loads that copy back (refusing a missing or altered one) so backtests,
live sessions and the served archive use the very functions the model was trained on. The
copy is the module's own file: what it imports must be installed where the model runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from core.errors import ConfigError, DataError, unknown_name
from mlmodels.leakage import (
    FeatureLeakError,
    LeakFinding,
    future_information_check,
    truncation_check,
)

ENTRY_POINT_GROUP = "btml.features"
MODULE_FILE = "features_module.py"  # the module's copy beside a model's weights
FIX = "compute it from bars up to t only (no shift(-k), no rolling(center=True), no statistic over the whole sample)"  # fmt: skip


@dataclass(frozen=True)
class UserFeatures:
    """A loaded feature module: where it came from, its functions in order, its warm-up, the
    sha256 and path of its file, and whether the built-in features come before its own
    (``builtin``; False: the module's features are the only ones)."""

    source: str
    functions: tuple[tuple[str, Callable[..., Any]], ...]
    warmup: int = 0
    digest: str = ""
    path: str = ""
    builtin: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.functions)

    @property
    def total_warmup(self) -> int:
        """Bars before the first complete row of :meth:`table` (built-in and module, or the
        module's alone when not ``builtin``)."""
        from mlmodels.features import WARMUP

        return max(WARMUP, self.warmup) if self.builtin else self.warmup

    def table(
        self, ohlcv: pd.DataFrame, index: pd.DataFrame | None = None, *, strict: bool = True
    ) -> pd.DataFrame:
        """What training and serving feed the model: :meth:`compute_with` when ``builtin``,
        else the module's features alone (checked like :meth:`compute_with` when ``strict``)."""
        if self.builtin:
            return self.compute_with(ohlcv, index, strict=strict)
        own = self.compute(ohlcv, index)
        if strict:
            self._check_complete(own, ohlcv)
        return own

    def compute(self, ohlcv: pd.DataFrame, index: pd.DataFrame | None = None) -> pd.DataFrame:
        """The module's features for one symbol, one float64 column each, on ``ohlcv``'s rows."""
        cols = {name: self._one(name, fn, ohlcv, index) for name, fn in self.functions}
        return pd.DataFrame(cols, index=ohlcv.index)

    def compute_with(
        self, ohlcv: pd.DataFrame, index: pd.DataFrame | None = None, *, strict: bool = True
    ) -> pd.DataFrame:
        """The built-in features followed by the module's (what training and serving use).

        With ``strict``, a NaN or infinite value of a module feature from row ``warmup`` on
        raises :class:`DataError` naming the feature, the symbol and the date.
        """
        from mlmodels.features import compute_features

        own = self.compute(ohlcv, index)
        if strict:
            self._check_complete(own, ohlcv)
        return pd.concat([compute_features(ohlcv, index, strict=strict), own], axis=1)

    def check(self, frames: Mapping[str, pd.DataFrame], index: pd.DataFrame | None = None) -> None:
        """Truncation-test every function on every frame; raise at the first leak found."""
        for sym, frame in frames.items():
            found = self.findings(frame, index)
            if found:
                f = found[0]
                raise FeatureLeakError(
                    f"{self.source}: feature {f.feature} reads the future on {sym}: {f.detail}; "
                    f"{FIX}"
                )

    def findings(self, frame: pd.DataFrame, index: pd.DataFrame | None = None) -> list[LeakFinding]:
        """Every module feature whose past values change when ``frame``'s later bars go."""
        return truncation_check(frame, self.compute, index=index)

    def scan(
        self, frames: Mapping[str, pd.DataFrame], index: pd.DataFrame | None = None
    ) -> list[tuple[str, LeakFinding]]:
        """``(symbol, finding)`` for every frame: the truncation test, then the weak-leak test
        (:func:`~mlmodels.leakage.future_information_check`) of the features that passed it,
        which sees future data joined from outside the bars (the truncation test cannot)."""
        out: list[tuple[str, LeakFinding]] = []
        for sym, frame in frames.items():
            cut = self.findings(frame, index)
            rest = [n for n in self.names if n not in {f.feature for f in cut}]
            values = self.compute(frame, index)[rest].iloc[self.warmup :]
            stat = future_information_check(values, frame) if rest else []
            out += [(sym, f) for f in [*cut, *stat]]
        return out

    def card(self) -> dict[str, Any]:
        """What a model card keeps to reload and verify the same module at serving time (its
        ``feature_module``; the module's source is stored beside it as ``file``)."""
        return {
            "source": self.source, "file": MODULE_FILE, "sha256": self.digest,
            "names": list(self.names), "warmup": self.warmup, "builtin": self.builtin,
        }  # fmt: skip

    def source_bytes(self) -> bytes:
        """The module file's bytes (what the registry stores beside the model); refused when
        they differ from the ones loaded (the file changed since) or there is no file."""
        if not self.path or not Path(self.path).is_file():
            raise ConfigError(
                f"features module {self.source}: no source file to store with the model; "
                "give --features-module a .py file or a module that has one"
            )
        data = Path(self.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.digest:
            raise ConfigError(
                f"features module {self.source}: {self.path} changed after it was loaded "
                "and checked; run again"
            )
        return data

    def _one(
        self, name: str, fn: Callable[..., Any], ohlcv: pd.DataFrame, index: pd.DataFrame | None
    ) -> np.ndarray:
        sym = str(ohlcv.attrs.get("symbol", "<unnamed>"))
        try:
            out = fn(ohlcv.copy(), index=index) if _takes_index(fn) else fn(ohlcv.copy())
        except Exception as err:  # user code: report it as bad input, with its own words
            raise DataError(
                f"{self.source}: feature {name} failed on {sym} ({len(ohlcv)} bars): "
                f"{type(err).__name__}: {err}"
            ) from err
        return _as_column(self.source, name, out, ohlcv)

    def _check_complete(self, own: pd.DataFrame, ohlcv: pd.DataFrame) -> None:
        values = own.to_numpy()[self.warmup :]
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            at = self.warmup + int(row)
            raise DataError(
                f"{self.source}: feature {own.columns[col]} is not a finite number at "
                f"{ohlcv.index[at]} (bar {at}) on {ohlcv.attrs.get('symbol', '<unnamed>')}, "
                f"after the module's WARMUP of {self.warmup} bars; raise WARMUP or fix the function"
            )


def _takes_index(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name == "index" for p in params)


def _as_column(source: str, name: str, out: object, ohlcv: pd.DataFrame) -> np.ndarray:
    """One float64 value per bar, or a DataError saying what the function returned instead."""
    if isinstance(out, pd.Series) and not out.index.equals(ohlcv.index):
        raise DataError(
            f"{source}: feature {name} returned a Series on another index "
            f"({len(out)} rows); return one value per bar on the input's index"
        )
    try:
        arr = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{source}: feature {name} returned no numbers ({err})") from err
    if arr.shape != (len(ohlcv),):
        raise DataError(
            f"{source}: feature {name} returned shape {arr.shape}; "
            f"return one value per bar ({len(ohlcv)},)"
        )
    return arr


def load_feature_module(spec: str) -> UserFeatures:
    """Load a feature module from a ``.py`` path, a module name, or a ``btml.features`` entry
    point (see the module docstring); raises :class:`ConfigError` with what was tried."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"features module {spec}: no such file")
        return _from_object(spec, _import_file(path), path)
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if spec in eps:
        obj = _guarded(spec, eps[spec].load)
        home = sys.modules.get(eps[spec].module)  # a FEATURES dict has no file of its own
        return _from_object(spec, obj, getattr(home, "__file__", None))
    try:
        module = importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name != spec.split(".")[0] and err.name != spec:
            raise ConfigError(f"features module {spec}: {err}") from err
        known = [*eps, "<path>.py", "<module.name>"]
        raise unknown_name(
            f"features module (entry points in {ENTRY_POINT_GROUP})", spec, known
        ) from err
    except Exception as err:  # user code at import time
        raise ConfigError(f"features module {spec}: {type(err).__name__}: {err}") from err
    return _from_object(spec, module, getattr(module, "__file__", None))


def _guarded(spec: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except Exception as err:  # user code at import time
        raise ConfigError(f"features module {spec}: {type(err).__name__}: {err}") from err


def _import_file(path: Path) -> ModuleType:
    name = f"btml_user_features_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"features module {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # user code at import time
        sys.modules.pop(name, None)
        raise ConfigError(f"features module {path}: {type(err).__name__}: {err}") from err
    return module


def _digest(path: str | Path | None) -> str:
    if path is None or not Path(path).is_file():
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _from_object(spec: str, obj: Any, path: str | Path | None) -> UserFeatures:
    """Validate ``FEATURES`` (and ``WARMUP``) of a module, or a FEATURES dict itself, loaded
    from the file at ``path``."""
    from mlmodels.features import FEATURE_NAMES

    table = obj if isinstance(obj, Mapping) else getattr(obj, "FEATURES", None)
    if not isinstance(table, Mapping) or not table:
        raise ConfigError(
            f"features module {spec}: define FEATURES = {{'name': function, ...}} "
            "(one function of the bars per feature)"
        )
    for name, fn in table.items():
        if not isinstance(name, str) or not name or not callable(fn):
            raise ConfigError(f"features module {spec}: FEATURES[{name!r}] must be a function")
        if name in FEATURE_NAMES:
            raise ConfigError(f"features module {spec}: {name} is a built-in feature; rename it")
    warmup = getattr(obj, "WARMUP", 0)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"features module {spec}: WARMUP must be an int >= 0, got {warmup!r}")
    where = str(Path(path).resolve()) if path is not None and Path(path).is_file() else ""
    return UserFeatures(spec, tuple(table.items()), warmup, _digest(path), where)


def load_checked(
    spec: str, frames: Mapping[str, pd.DataFrame], index: pd.DataFrame | None = None
) -> UserFeatures:
    """Load a feature module and truncation-test it on ``frames``: the call training and
    backtests make before they start (raises :class:`FeatureLeakError` on a leak)."""
    user = load_feature_module(spec)
    user.check(frames, index)
    return user


def verify_copy(info: Mapping[str, Any], model_dir: str | Path, ref: str) -> Path:
    """Check the module copy in ``model_dir`` against the sha256 the card pins (``info`` is
    its ``feature_module``) without running it; returns its path. Raises :class:`DataError`
    in one line when the copy is missing or altered."""
    path = Path(model_dir) / str(info.get("file") or MODULE_FILE)
    if not path.is_file():
        raise DataError(
            f"model {ref} was trained with features module {info.get('source')}, but its copy "
            f"{path} is missing; restore it, or retrain the model (an archive: rebuild it)"
        )
    found = _digest(path)
    if found != info.get("sha256"):
        raise DataError(
            f"model {ref}: its features module copy {path} was altered (sha256 {found}, the "
            f"card pins {info.get('sha256')}); refusing it: restore the file or retrain"
        )
    return path


def from_card(info: Mapping[str, Any], model_dir: str | Path, ref: str) -> UserFeatures:
    """The feature module a model card records (``info``, its ``feature_module``), loaded from
    the verified copy in ``model_dir`` (:func:`verify_copy`); also refused when the copy no
    longer gives the recorded names and warm-up."""
    path = verify_copy(info, model_dir, ref)
    user = _from_object(str(info.get("source") or path), _import_file(path), path)
    if list(user.names) != list(info.get("names", [])) or user.warmup != info.get("warmup", 0):
        raise DataError(
            f"model {ref}: its features module copy {path} gives features {list(user.names)} "
            f"and WARMUP {user.warmup}, the card records {info.get('names')} and "
            f"{info.get('warmup')}; restore the file or retrain"
        )
    return dataclasses.replace(user, builtin=bool(info.get("builtin", True)))
