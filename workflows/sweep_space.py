"""What a sweep (:mod:`workflows.sweep`) is as data: its search space, its request, its study.

A space maps each searched parameter (:data:`PARAMS`: the preset, the window, training
settings ``train.*``, the preset's ``model.dropout`` and sizes, the entry rules ``ml.*``) to
a range ``{low, high, step?, log?}`` (an integer or a float by the parameter) or to a list of
choices. In TOML the ``[train]``, ``[model]`` and ``[ml]`` tables group theirs::

    window = {low = 16, high = 48, step = 8}
    [train]
    lr = {low = 1e-4, high = 1e-2, log = true}
    [ml]
    horizon_agreement = {low = 0, high = 3}
    allow_short = [true, false]

A space is checked when a :class:`SweepConfig` is made: an unknown parameter (with the closest
known one), a malformed range, or a bound a config refuses is one :class:`ConfigError`.

The study is Optuna's, in its RDB storage on the run registry's database; it keeps what it is
(:meth:`SweepConfig.identity`: the space, the objective, the base request) as a user
attribute, and :func:`check_study` refuses to resume it with another, reading only.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.config import DataConfig
from core.errors import ConfigError, UserError, unknown_name
from mlmodels.nets.model import get_architecture
from workflows.runs_db import check_url, where
from workflows.walkforward import WalkForwardConfig, seed_config

#: The parameters a search space may search, by kind: ``int``, ``float`` or ``choice``.
PARAMS: dict[str, str] = {
    "arch": "choice", "window": "int",
    "train.lr": "float", "train.epochs": "int", "train.batch_size": "int",
    "train.weight_decay": "float", "train.patience": "int", "train.ema": "float",
    "model.dropout": "float", "model.fusion_d": "int", "model.head_hidden": "int",
    "ml.entry_prob": "float", "ml.min_edge": "float", "ml.min_confidence": "float",
    "ml.horizon_agreement": "int", "ml.allow_short": "choice", "ml.entry_rule": "choice",
    "ml.min_return": "float",
}  # fmt: skip
#: The built-in search space: the learning rate, dropout, window and the entry rules.
DEFAULT_SPACE: dict[str, Any] = {
    "window": {"low": 16, "high": 48, "step": 8},
    "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.4},
    "ml.entry_prob": {"low": 0.0, "high": 0.6},
    "ml.min_edge": {"low": 0.0, "high": 0.1},
    "ml.horizon_agreement": {"low": 0, "high": 3},
}
#: Metrics of the stitched out-of-sample returns a sweep can maximise.
OBJECTIVES = ("sharpe", "sortino", "total_return")
IDENTITY = "btml_identity"  # the study's user attribute: its space, objective, base request
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# -- the search space ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: ``choices``, or a range ``low``..``high`` (``step``, ``log``)."""

    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False

    def to_dict(self) -> Any:
        if self.choices:
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        return (
            out | ({"step": self.step} if self.step else {}) | ({"log": True} if self.log else {})
        )

    def values(self) -> tuple[Any, ...]:
        """The extreme values (every choice): what validation tries."""
        return self.choices or (self.low, self.high)

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for an Optuna trial."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """The searched parameters, in name order (see the module docstring for the format)."""

    dims: tuple[Dimension, ...]

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str = "search space") -> SearchSpace:
        """A space from plain values (nested tables flattened to ``train.lr``)."""
        flat = _flatten(data, where)
        if not flat:
            raise ConfigError(f"{where}: no parameters; give e.g. train.lr = {{low, high}}")
        return cls(tuple(_dimension(name, flat[name], where) for name in sorted(flat)))

    def to_dict(self) -> dict[str, Any]:
        """The canonical plain form (``parse(to_dict())`` gives the same space)."""
        return {d.name: d.to_dict() for d in self.dims}

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dims}

    def to_toml(self) -> str:
        """The space as a TOML file ``--space`` reads."""
        groups: dict[str, list[str]] = {}
        for d in self.dims:
            group, _, key = d.name.rpartition(".")
            groups.setdefault(group, []).append(f"{key} = {_toml_value(d.to_dict())}")
        blocks = [("" if g == "" else f"[{g}]\n") + "\n".join(v) for g, v in sorted(groups.items())]
        return "\n\n".join(blocks) + "\n"


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read a space from a TOML or JSON file (its ``space`` table when it has one)."""
    p = Path(path)
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except OSError as err:
        raise ConfigError(f"cannot read the search space {p} ({err.strerror or err})") from err
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(
            f"{p} is not valid {p.suffix.lstrip('.').upper() or 'TOML'} ({err})"
        ) from err
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a table of parameters")
    return SearchSpace.parse(data.get("space", data), str(p))


def _flatten(data: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not ({"low", "high"} & set(value)):
            out |= _flatten(value, where, f"{name}.")
        else:
            out[name] = value
    return out


def _dimension(name: str, spec: Any, where: str) -> Dimension:
    if name not in PARAMS:
        raise unknown_name(f"parameter in {where}:", name, PARAMS)
    kind, at = PARAMS[name], f"{where}: {name}"
    if isinstance(spec, list | tuple):
        if not spec or not all(isinstance(v, bool | int | float | str) for v in spec):
            raise ConfigError(f"{at}: give a non-empty list of numbers, strings or booleans")
        return Dimension(name, kind, choices=tuple(spec))
    if kind == "choice" or not isinstance(spec, Mapping):
        raise ConfigError(
            f"{at}: give a list of choices" + ("" if kind == "choice" else " or {low, high}")
        )
    unknown = set(spec) - {"low", "high", "step", "log"}
    if unknown or not {"low", "high"} <= set(spec):
        raise ConfigError(
            f"{at}: a range has low, high and optionally step, log; got {sorted(spec)}"
        )
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    numbers = [v for v in (low, high, step) if v is not None]
    if not all(
        isinstance(v, int if kind == "int" else int | float) and not isinstance(v, bool)
        for v in numbers
    ):
        raise ConfigError(
            f"{at}: low, high and step must be {'integers' if kind == 'int' else 'numbers'}"
        )
    if not low < high or (step is not None and step <= 0) or not isinstance(log, bool):
        raise ConfigError(f"{at}: needs low < high, a positive step and log true or false")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{at}: a log range needs low > 0 and no step")
    conv = int if kind == "int" else float
    return Dimension(name, kind, low=conv(low), high=conv(high),
                     step=None if step is None else conv(step), log=log)  # fmt: skip


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def apply_params(
    base: WalkForwardConfig, params: Mapping[str, Any]
) -> tuple[WalkForwardConfig, dict[str, Any]]:
    """``base`` with a trial's parameters, and the model overrides (``model.*``); a value a
    config refuses raises its :class:`ConfigError`."""
    groups: dict[str, dict[str, Any]] = {"": {}, "train": {}, "ml": {}, "model": {}}
    for name, value in params.items():
        group, _, key = name.rpartition(".")
        groups[group][key] = value
    cfg = replace(base, **groups[""], train=replace(base.train, **groups["train"]),
                  ml=replace(base.ml, **groups["ml"]))  # fmt: skip
    model = groups["model"]
    replace(get_architecture(cfg.arch), **model)  # checks the preset and the values
    return cfg, model


# -- the request ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SweepConfig(DataConfig):
    """One sweep request as plain values (``btml sweep``'s options): ``walkforward`` is the
    base request each trial changes by its parameters (one seed; its ``name``, ``serving``
    and ``tearsheet`` are not used), ``space`` the search space's plain form, ``trials`` how
    many to run now, ``seed`` the sampler's, ``startup_trials`` the sampler's random trials
    first, ``prune_after`` the finished trials before pruning starts, ``batch`` the trials
    asked at once (0: the executor's workers)."""

    walkforward: WalkForwardConfig
    space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    study: str = "sweep"
    trials: int = 20
    objective: str = "sharpe"
    seed: int = 0
    startup_trials: int = 10
    prune_after: int = 5
    batch: int = 0
    new_study: bool = False

    def __post_init__(self) -> None:
        if not _STUDY_NAME.match(self.study):
            raise ConfigError(
                f"study name {self.study!r}: use 1 to 64 letters, digits, '.', '_' or '-'"
            )
        if not 1 <= self.trials <= 10_000:
            raise ConfigError(f"trials must be in [1, 10000], got {self.trials}")
        if self.objective not in OBJECTIVES:
            raise unknown_name("objective", self.objective, OBJECTIVES)
        if min(self.startup_trials, self.prune_after, self.batch) < 0:
            raise ConfigError("startup_trials, prune_after and batch must be >= 0")
        if self.walkforward.seeds != 1:
            raise ConfigError("a sweep trains each trial once: give one seed (then rerun the "
                              "best configuration with btml walkforward --seeds N)")  # fmt: skip
        space = SearchSpace.parse(self.space)
        object.__setattr__(self, "space", space.to_dict())
        for d in space.dims:
            for value in d.values():
                try:
                    apply_params(self.walkforward, {d.name: value})
                except ConfigError as err:
                    raise ConfigError(f"search space {d.name} = {value!r}: {err}") from None

    def search_space(self) -> SearchSpace:
        return SearchSpace.parse(self.space)

    def identity(self) -> dict[str, Any]:
        """What a study is: its space, its objective and the base request (less the searched
        values); resuming needs the same."""
        base = trial_config(self.walkforward, {})
        for name in self.space:
            group, _, key = name.rpartition(".")
            (base.get(group, {}) if group else base).pop(key, None)
        value = {"space": self.space, "objective": self.objective, "base": base}
        return dict(json.loads(json.dumps(value, sort_keys=True)))


def trial_config(cfg: WalkForwardConfig, model: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration a trial tried, exactly as a walk-forward of ``cfg`` records its seed
    (:func:`workflows.walkforward.seed_config`: less the models' name, the serving, the
    tearsheet, the seeds, the threads and how signals are computed), with its model
    overrides: rerunning the best trial with ``btml walkforward`` is the same configuration."""
    return seed_config(cfg, cfg.train.seed) | ({"model": dict(model)} if model else {})


class StudyMismatch(UserError):
    """The study exists with another search space, objective or base request."""


# -- the study in the registry's database ----------------------------------------------------


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def open_storage(url: str, **kwargs: Any) -> Any:
    """Optuna's RDB storage on the registry's database."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)


def existing_studies(url: str) -> dict[str, Any]:
    """``{name: identity}`` of the studies in the database at ``url``, read only (None for a
    study not made by a sweep); a database without Optuna's tables has none."""
    import sqlalchemy as sa

    parsed = check_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return {}
    engine = sa.create_engine(parsed, **_engine_kwargs(url))
    try:
        if not sa.inspect(engine).has_table("studies"):
            return {}
    finally:
        engine.dispose()
    storage = open_storage(url, skip_table_creation=True)
    try:
        return {s.study_name: s.user_attrs.get(IDENTITY) for s in storage.get_all_studies()}
    finally:
        storage.remove_session()
        storage.engine.dispose()


def check_study(url: str, cfg: SweepConfig) -> tuple[str, bool]:
    """The study to use and whether it exists (to resume). Refuses (:class:`StudyMismatch`)
    a study of another space, objective or base request; ``new_study`` picks a free name."""
    found, name = existing_studies(url), cfg.study
    if cfg.new_study:
        k = 2
        while name in found:
            name, k = f"{cfg.study}-{k}", k + 1
        return name, False
    if name not in found:
        return name, False
    stored, mine = _as_made_now(found[name]), cfg.identity()
    diff = [what for key, what in (("space", "search space"), ("objective", "objective"),
            ("base", "base request (symbols, folds, training, strategy)"))
            if (stored or {}).get(key) != mine[key]]  # fmt: skip
    if diff:
        made = (
            "was not made by btml sweep" if stored is None else f"has another {' and '.join(diff)}"
        )
        raise StudyMismatch(
            f"study {name!r} in {where(check_url(url))} {made}; --new-study starts a fresh "
            "one (or name another --study)"
        )
    return name, True


def _as_made_now(identity: Any) -> Any:
    """A stored identity as :meth:`SweepConfig.identity` makes it now: studies made before
    trials left out how signals are computed keep ``ml.inference`` and ``ml.chunk`` in their
    base request, which do not change what the study is."""
    ml = identity.get("base", {}).get("ml") if isinstance(identity, Mapping) else None
    if not isinstance(ml, Mapping):
        return identity
    kept = {k: v for k, v in ml.items() if k not in ("inference", "chunk")}
    return {**identity, "base": {**identity["base"], "ml": kept}}


def open_study(storage: Any, name: str, cfg: SweepConfig, resumed: bool) -> Any:
    """Create or load the study, its TPE sampler seeded with ``seed`` plus the trials it has
    (a resumed study does not repeat its first draws)."""
    import optuna

    done = len(optuna.load_study(study_name=name, storage=storage).trials) if resumed else 0
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=resumed,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed + done,
                                           n_startup_trials=cfg.startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_after),
    )  # fmt: skip
    if not resumed:
        study.set_user_attr(IDENTITY, cfg.identity())
    return study
