"""Champion and challenger: the shadow test, ``btml models promote`` and ``btml models rollback``.

A model name has a *champion*, the version ``name`` alone means (``btml trade NAME``,
``btml backtest --model NAME``): the latest version until a first promotion, then the version
promoted last (:meth:`mlmodels.registry.ModelRegistry.champion`). ``btml models update`` makes
the parent the champion when none is recorded yet, so the challenger it registers is never
traded before it is promoted.

A challenger earns promotion in shadow: ``btml trade NAME --shadow NAME:V`` scores it on the
session's live bars beside the champion (:mod:`strategies.shadow`; recorded, never traded).
:func:`promote` reads every session's shadow rows of that challenger against the current
champion and tests the difference on the bars where both answered:

- ``ic`` (default): the 1-bar rank IC of each model's predicted return against the realised
  next-bar log return of the same symbol, pooled over symbols and bars;
- ``pnl``: the mean per-bar return of trading each model's direction call (long, flat or short
  one unit per symbol), net of ``cost_bps`` per unit of position change.

The difference (challenger minus champion) gets a 95 % interval from a moving-block bootstrap
over bars; the challenger is promoted when the interval's lower end is above zero. A
challenger never scored against the champion, or with fewer than ``min_bars`` shadow bars, is
refused before anything is recorded. Every promotion and rollback is a run of kind
``promotion`` and an entry in the name's champion history; after a promotion only the newest
``keep`` versions stay, besides the champion and the versions a rollback can return to.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from core.errors import ConfigError, DataError, ModelNotFound
from mlmodels.head_metrics import BlockBootstrap, Scored, difference, pearson, score
from mlmodels.registry import ModelCard, ModelRegistry, parse_ref
from strategies.shadow import SHADOW_FILE
from workflows.runs import RunRegistry

Log = Callable[[str], None]
TESTS = ("ic", "pnl")


@dataclass(frozen=True)
class PromoteConfig:
    """How a challenger is judged: ``test`` (ic or pnl), the shadow bars needed, the cost
    per unit of position change for ``pnl``, and how many versions to keep."""

    test: str = "ic"
    min_bars: int = 100
    cost_bps: float = 10.0
    keep: int = 5
    reps: int = 1000

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ConfigError(f"--test must be one of {', '.join(TESTS)}, got {self.test!r}")
        if self.min_bars < 20:
            raise ConfigError(
                f"--min-bars must be >= 20 (an interval needs bars), got {self.min_bars}"
            )
        if self.keep < 2:
            raise ConfigError(f"--keep must be >= 2 (the champion and one more), got {self.keep}")
        if not 0 <= self.cost_bps < 1000:
            raise ConfigError(f"--cost-bps must be in [0, 1000), got {self.cost_bps}")


@dataclass(frozen=True)
class ShadowTest:
    """The shadow window's verdict: each model's figure and the difference with its interval."""

    test: str
    champion: str
    challenger: str
    bars: int
    rows: int
    sessions: tuple[str, ...]
    champion_value: float
    challenger_value: float
    difference: Mapping[str, float | None]

    @property
    def passed(self) -> bool:
        lo = self.difference.get("lo")
        return lo is not None and lo > 0

    def line(self) -> str:
        what = "1-bar rank IC" if self.test == "ic" else "net P&L per bar (bps)"
        d = self.difference
        interval = (f"[{d['lo']:+.4f}, {d['hi']:+.4f}]" if d.get("lo") is not None
                    else "[no interval]")  # fmt: skip
        return (
            f"{what} over {self.bars} shadow bars ({self.rows} rows, {len(self.sessions)} "
            f"session(s)): {self.challenger} {self.challenger_value:+.4f}, {self.champion} "
            f"{self.champion_value:+.4f}, difference {d['value']:+.4f} {interval}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference": dict(self.difference), "passed": self.passed}


@dataclass(frozen=True)
class PromoteResult:
    run_id: str
    test: ShadowTest
    promoted: bool
    pruned: tuple[str, ...] = ()


def shadow_rows(
    runs: RunRegistry, champion: str, challenger: str
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Every session's shadow rows of ``challenger`` scored beside ``champion`` (refs),
    flattened: ``t``, ``symbol``, ``close``, ``champion_return``, ``challenger_return``,
    ``champion_direction``, ``challenger_direction`` (rows where a model gave no signal are
    dropped); and the sessions' run ids."""
    rows, sessions, before = [], [], None
    while page := runs.list(kind="session", limit=200, before=before):
        before = page[-1].id
        for rec in page:
            if rec.params.get("shadow") != challenger or rec.params.get("model") != champion:
                continue
            path = rec.dir / SHADOW_FILE
            if not path.exists():
                continue
            sessions.append(rec.id)
            rows.extend(_read_rows(path))
    cols = ["t", "symbol", "close", "champion_return", "challenger_return",
            "champion_direction", "challenger_direction"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=cols)
    if len(frame):
        frame["t"] = pd.to_datetime(frame["t"], utc=True)
        frame = frame.drop_duplicates(["t", "symbol"]).sort_values(["symbol", "t"])
    return frame.reset_index(drop=True), tuple(sorted(sessions))


def _read_rows(path: Path) -> list[tuple[Any, ...]]:
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
        except ValueError:
            if n == len(lines):
                continue  # a session killed mid-write leaves a partial last line
            raise DataError(f"{path}:{n}: not a shadow row") from None
        champ, chal = r.get("champion"), r.get("challenger")
        if champ and chal:
            out.append((r["t"], r["symbol"], float(r["close"]), champ["return_1"],
                        chal["return_1"], champ["direction"], chal["direction"]))  # fmt: skip
    return out


def shadow_test(
    frame: pd.DataFrame,
    champion: str,
    challenger: str,
    sessions: Sequence[str],
    cfg: PromoteConfig = PromoteConfig(),
) -> ShadowTest:
    """Test the challenger against the champion on ``frame`` (:func:`shadow_rows`); the
    realised return of a row is the log return to the same symbol's next shadow bar."""
    f = frame.copy()
    f["realised"] = np.log(f.groupby("symbol")["close"].shift(-1) / f["close"])
    f = f[np.isfinite(f["realised"])].reset_index(drop=True)
    real = f["realised"].to_numpy(np.float64)
    boot = BlockBootstrap(pd.DatetimeIndex(f["t"]), reps=cfg.reps)
    resamples, full = boot.resamples(1), np.arange(len(f))

    def figure(who: str) -> Scored:
        if cfg.test == "ic":
            pred = f[f"{who}_return"].to_numpy(np.float64)
            return score(lambda i: pearson(rankdata(pred[i]), rankdata(real[i])), resamples, full)
        pnl = _net_pnl(f, f"{who}_direction", cfg.cost_bps)
        return score(lambda i: float(pnl[i].mean()), resamples, full)

    a, b = figure("challenger"), figure("champion")
    return ShadowTest(cfg.test, champion, challenger, boot.n_dates, len(f), tuple(sessions),
                      b.value, a.value, difference(a, b))  # fmt: skip


def _net_pnl(f: pd.DataFrame, column: str, cost_bps: float) -> np.ndarray:
    """Per row, in bps: one unit in the direction called, held for the next bar, less the
    cost of changing the position from the symbol's previous row."""
    pos = f[column].to_numpy(np.float64)
    prev = f.groupby("symbol")[column].shift(1).fillna(0.0).to_numpy(np.float64)
    gross = pos * (np.exp(f["realised"].to_numpy(np.float64)) - 1.0)
    return 1e4 * gross - cost_bps * np.abs(pos - prev)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote(
    store: str | Path,
    ref: str,
    cfg: PromoteConfig = PromoteConfig(),
    *,
    log: Log = print,
    db_url: str | None = None,
) -> PromoteResult:
    """Promote challenger ``ref`` (``name:version``; a bare name means its newest version)
    when it beats the champion in shadow (module docstring); a run of kind ``promotion``."""
    store_path = Path(store)
    registry = ModelRegistry(store_path / "models")
    name, version = parse_ref(ref)
    versions = registry.versions(name)
    challenger = registry.card(f"{name}:{version or (versions or [0])[-1]}")
    with RunRegistry(store_path, db_url) as runs:
        champion = _champion(registry, runs, challenger)
        if challenger.ref == champion.ref:
            raise ConfigError(f"{challenger.ref} is already the champion of {name}")
        frame, sessions = shadow_rows(runs, champion.ref, challenger.ref)
        if not sessions:
            raise ConfigError(
                f"{challenger.ref} was never scored in shadow against the champion {champion.ref}:"
                f" trade first with btml trade {name} --shadow {challenger.ref}"
            )
        bars = frame["t"].nunique() - 1 if len(frame) else 0
        if bars < cfg.min_bars:
            raise ConfigError(
                f"{challenger.ref} has {max(bars, 0)} shadow bars against {champion.ref}; "
                f"--min-bars needs {cfg.min_bars} (shadow it longer, or lower --min-bars)"
            )
        test = shadow_test(frame, champion.ref, challenger.ref, sessions, cfg)
        params = {"action": "promote", "model": name, "champion": champion.ref,
                  "challenger": challenger.ref, **asdict(cfg)}  # fmt: skip
        with runs.start("promotion", params, inputs={}) as run:
            for session in sessions:
                run.depends_on(session)
            run.log_metrics({"test": test.to_dict(), "promoted": test.passed})
            log(test.line())
            # the model it was tested against stays what NAME means if it is not promoted
            make_champion(registry, champion, "the model the challenger was shadowed against")
            if not test.passed:
                log(f"not promoted: the interval does not exclude zero; {champion.ref} stays")
                return PromoteResult(run.id, test, False)
            registry.set_champion(name, challenger.version, {
                "version": challenger.version, "previous": champion.version,
                "action": "promote", "at": _now(), "run": run.id, "test": test.test,
                "difference": test.difference})  # fmt: skip
            log(f"promoted {challenger.ref}: `{name}` now means it (was {champion.ref})")
            pruned = prune(registry, runs, name, cfg.keep)
            for r in pruned:
                log(f"removed {r} (keeping the newest {cfg.keep} versions)")
            run.log_metrics({"pruned": list(pruned)})
            return PromoteResult(run.id, test, True, pruned)


def _champion(registry: ModelRegistry, runs: RunRegistry, challenger: ModelCard) -> ModelCard:
    """The champion recorded for the challenger's name; before any is recorded, the version
    of that name the newest session shadowing the challenger traded (else the latest)."""
    if registry.champion(challenger.name) is None:
        for rec in runs.list(kind="session", limit=500):
            traded = str(rec.params.get("model") or "")
            if rec.params.get("shadow") == challenger.ref and traded.startswith(
                f"{challenger.name}:"
            ):
                try:
                    return registry.card(traded)
                except ModelNotFound:
                    break  # that version is gone: the latest stands in
    return registry.card(challenger.name)


def champion_stack(registry: ModelRegistry, name: str) -> list[int]:
    """The champions a rollback can return to, oldest first (the last is the champion)."""
    stack: list[int] = []
    for entry in registry.champion_record(name)["history"]:
        if entry.get("action") == "rollback":
            stack.pop() if len(stack) > 1 else None
        elif stack[-1:] != [entry["version"]]:
            stack.append(int(entry["version"]))
    return stack


def make_champion(registry: ModelRegistry, card: ModelCard, reason: str) -> None:
    """Record ``card`` as its name's champion if none is recorded yet (``reason`` says why)."""
    if registry.champion(card.name) is None:
        registry.set_champion(card.name, card.version, {"version": card.version,
                              "previous": None, "action": "initial", "at": _now(),
                              "run": None, "reason": reason})  # fmt: skip


def rollback(
    store: str | Path, name: str, *, log: Log = print, db_url: str | None = None
) -> tuple[str, ModelCard]:
    """Make the champion before the current one the champion again; (run id, its card)."""
    store_path = Path(store)
    registry = ModelRegistry(store_path / "models")
    if ":" in name:
        raise ConfigError(f"rollback takes a model name, not a version: {name.partition(':')[0]}")
    current = registry.card(name)
    stack = champion_stack(registry, name)
    if len(stack) < 2:
        raise ConfigError(
            f"{name} has no earlier champion to roll back to (champion {current.ref})"
        )
    target = registry.card(f"{name}:{stack[-2]}")
    params = {"action": "rollback", "model": name, "champion": current.ref,
              "to": target.ref}  # fmt: skip
    with RunRegistry(store_path, db_url) as runs, runs.start("promotion", params, inputs={}) as run:
        registry.set_champion(name, target.version, {
            "version": target.version, "previous": current.version, "action": "rollback",
            "at": _now(), "run": run.id})  # fmt: skip
        run.log_metrics({"promoted": None, "rolled_back_to": target.ref})
        log(f"rolled back: `{name}` means {target.ref} again (was {current.ref})")
        return run.id, target


def prune(registry: ModelRegistry, runs: RunRegistry, name: str, keep: int) -> tuple[str, ...]:
    """Remove versions of ``name`` older than the newest ``keep``, except the champion and
    the champions a rollback can return to; their run links go too. Returns the refs."""
    versions = registry.versions(name)
    protected = set(champion_stack(registry, name)) | set(versions[-keep:])
    removed = []
    for v in versions:
        if v in protected:
            continue
        ref = f"{name}:{v}"
        shutil.rmtree(registry.path(ref))
        runs.unlink_model(ref)
        removed.append(ref)
    return tuple(removed)


def describe_champion(registry: ModelRegistry, name: str) -> dict[str, Any]:
    """The champion, the versions a rollback can return to and the history (for listings)."""
    record = registry.champion_record(name)
    versions = registry.versions(name)
    return {"champion": record.get("version") or (versions[-1] if versions else None),
            "promoted": record.get("version") is not None,
            "rollback_to": champion_stack(registry, name)[-2:-1] or None,
            "history": record["history"]}  # fmt: skip
