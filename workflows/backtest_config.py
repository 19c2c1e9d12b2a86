"""What a backtest request is as plain data: :class:`BacktestConfig` and :class:`MLRunConfig`.

Both are checked when made (a refused request records nothing) and round-trip through
``to_dict``/``from_dict`` (a run's ``params.json`` builds the same request back).
``workflows.backtest`` runs them and re-exports both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self, cast

import pandas as pd

from analyzers.backtest import BASELINES, CostConfig
from core.config import DataConfig
from core.errors import ConfigError
from feeds.membership import Membership, MemberSpan
from feeds.universes import get_universe, survivorship_warning
from strategies.batched import DEFAULT_CHUNK, INFERENCE_MODES
from strategies.entry_rules import check_entry_fields
from strategies.ml_signal import SERVING_POLICIES, MLSignalConfig
from strategies.risk import RiskConfig
from strategies.sizing import sizer_spec

SERVING = ("inprocess", "torchserve")


@dataclass(frozen=True, kw_only=True)
class MLRunConfig(DataConfig):
    """How the ML strategy trades in a backtest (checked here, before any run starts).

    ``entry_rule``: ``direction`` (default), ``return`` or ``auto`` (chosen on the model's
    validation split before the run, see ``strategies.entry_choice``); ``min_return`` is the
    ``return`` rule's threshold on the expected return net of a round trip (the round trip is
    the run's commission and slippage, both ways). ``inference``: ``per-bar`` (one request per
    timestamp) or ``batched`` (the model's paths scored ``chunk`` bars ahead, the heads per
    bar in-process: ``strategies.batched``; backtests only)."""

    entry_prob: float = 0.0
    min_edge: float = 0.01
    min_confidence: float = 0.0
    horizon_agreement: int = 2
    allow_short: bool = False
    risk: RiskConfig = field(default_factory=RiskConfig)
    serving_failure: str = "abort"
    sizer: str = "model"
    rebalance_band: float = 0.02
    entry_rule: str = "direction"
    min_return: float = 0.0
    inference: str = "per-bar"
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        sizer_spec(self.sizer)  # an unknown sizer is refused by name, before any run
        if not 0 <= self.rebalance_band < 1:
            raise ConfigError(f"rebalance_band must be in [0, 1), got {self.rebalance_band}")
        for name in ("entry_prob", "min_edge", "min_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.horizon_agreement <= 3:
            raise ConfigError(f"horizon_agreement must be 0..3, got {self.horizon_agreement}")
        if self.serving_failure not in SERVING_POLICIES:
            raise ConfigError(
                f"serving_failure must be one of {', '.join(SERVING_POLICIES)}, "
                f"got {self.serving_failure!r}"
            )
        check_entry_fields(self.entry_rule, self.min_return)
        if self.inference not in INFERENCE_MODES or not 1 <= self.chunk <= 100_000:
            raise ConfigError(
                f"--inference must be one of {', '.join(INFERENCE_MODES)} and --chunk in "
                f"[1, 100000], got {self.inference!r}, {self.chunk}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not isinstance(self.risk, DataConfig):
            out["risk"] = dataclasses.asdict(self.risk)
        return out

    def trial_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` less how signals are computed (``inference``, ``chunk``): the same
        decisions either way, so one trial."""
        return {k: v for k, v in self.to_dict().items() if k not in ("inference", "chunk")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str | None = None) -> Self:
        where = where or cls.__name__
        values = dict(data)
        if isinstance(values.get("risk"), Mapping):
            values["risk"] = _risk_config(values["risk"], f"{where}.risk")
        return super().from_dict(values, where=where)

    def strategy_config(self, costs: CostConfig | None = None) -> MLSignalConfig:
        """The ``MLSignalConfig`` of this run (plain values; the client and the windows go to
        the strategy beside it: ``client=``, ``windows=``); ``costs`` give the ``return``
        rule's round trip (commission and slippage, both ways)."""
        trip = 2 * (costs.commission + costs.slippage) if costs is not None else 0.0
        return MLSignalConfig(
            entry_prob=self.entry_prob, min_edge=self.min_edge,
            min_confidence=self.min_confidence, horizon_agreement=self.horizon_agreement,
            allow_short=self.allow_short, risk=self.risk, serving_failure=self.serving_failure,
            sizer=self.sizer, rebalance_band=self.rebalance_band, entry_rule=self.entry_rule,
            min_return=self.min_return, round_trip_cost=trip, inference=self.inference,
            chunk=self.chunk,
        )  # fmt: skip


def _risk_config(value: Mapping[str, Any], where: str) -> RiskConfig:
    """A ``RiskConfig`` from plain values, refusing unknown keys and wrong types by name."""
    from_dict = getattr(RiskConfig, "from_dict", None)  # once RiskConfig is a DataConfig
    if from_dict is not None:
        return cast(RiskConfig, from_dict(value, where=where))
    known = [f.name for f in dataclasses.fields(RiskConfig)]
    unknown = [k for k in value if k not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    try:
        return RiskConfig(**value)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


@dataclass(frozen=True, kw_only=True)
class BacktestConfig(DataConfig):
    """One backtest request as plain values: exactly one of ``model`` (traded beside both
    baselines at the same costs) or ``baseline``; dates as ISO strings (UTC when naive).

    The symbols are ``symbols``, or a named ``universe``'s (today's constituents: the run
    carries a survivorship warning), or with ``membership`` (point-in-time spans, e.g.
    ``feeds.membership.read_spans``) every symbol that was ever a member, each traded only
    while it was one (and no warning). ``start`` defaults to the model's test range (for a
    baseline: the first bar), ``end`` to the last bar. ``tearsheet`` and ``plot`` ask for
    ``tearsheet.html`` and ``plot.png`` (backtrader's own chart) in the run's folder.
    """

    symbols: tuple[str, ...] = ()
    model: str | None = None
    baseline: str | None = None
    serving: str = "inprocess"
    start: str | None = None
    end: str | None = None
    timeframe: str = "1Day"
    costs: CostConfig = field(default_factory=CostConfig)
    ml: MLRunConfig | None = None
    tearsheet: bool = False
    plot: bool = False
    universe: str | None = None
    membership: tuple[MemberSpan, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", self._resolved_symbols())
        if not self.symbols or any(not s or s != s.strip() for s in self.symbols):
            raise ConfigError(f"symbols: give stored symbols (--symbols A,B), got {self.symbols}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ConfigError(f"symbols: a symbol is named twice in {', '.join(self.symbols)}")
        if (self.model is None) == (self.baseline is None):
            raise ConfigError("give exactly one of --model or --baseline")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ConfigError(
                f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}"
            )
        if self.baseline is not None and self.ml is not None:
            raise ConfigError("ml (the ML strategy's settings) applies to a --model run only")
        if self.serving not in SERVING:
            raise ConfigError(f"serving must be one of {', '.join(SERVING)}, got {self.serving!r}")
        lo, hi = (_date_field(n, getattr(self, n)) for n in ("start", "end"))
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"start {self.start} is after end {self.end}")

    def _resolved_symbols(self) -> tuple[str, ...]:
        """``symbols`` as given, or the membership's, or the universe's; refuses a mix."""
        given = tuple(self.symbols)
        if self.membership is not None:
            members = self.members()
            assert members is not None
            ever = members.symbols()
            if self.universe is not None and given and given != ever:
                raise ConfigError("give --universe or --symbols, not both")
            missing = [s for s in given if s not in ever]
            if missing:
                raise ConfigError(
                    f"symbols: {missing[0]} is never a member in the membership file; "
                    "leave --symbols out to trade every member"
                )
            return given or ever
        if self.universe is not None:
            today = get_universe(self.universe)
            if given and given != today:
                raise ConfigError("give --universe or --symbols, not both")
            return today
        return given

    def members(self) -> Membership | None:
        """The point-in-time membership, if given."""
        if self.membership is None:
            return None
        if not self.membership:
            raise ConfigError("membership: the file has no rows; each is symbol,start[,end]")
        return Membership(self.membership)

    def warnings(self) -> list[str]:
        """The survivorship warning for a universe's today's constituents."""
        if self.universe is not None and self.membership is None:
            return [survivorship_warning(self.universe)]
        return []


def _date_field(name: str, value: str | None) -> pd.Timestamp | None:
    try:
        return utc(value)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{name}: {value!r} is not a date (use YYYY-MM-DD)") from err


def utc(t: Any) -> pd.Timestamp | None:
    """``t`` as a UTC timestamp (naive is UTC); None stays None."""
    if t is None:
        return None
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
