"""core.config.DataConfig: configs round-trip through plain dicts and refuse what does not fit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from core.config import DataConfig
from core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Inner(DataConfig):
    rate: float = 0.1
    mode: str = "a"


@dataclass(frozen=True, kw_only=True)
class Outer(DataConfig):
    name: str
    count: int = 3
    symbols: tuple[str, ...] = ()
    weights: dict[str, float] | None = None
    start: pd.Timestamp | None = None
    out: Path = Path("x")
    inner: Inner = Inner()
    flag: bool = False


def test_round_trip_through_json() -> None:
    c = Outer(
        name="n",
        count=5,
        symbols=("A", "B"),
        weights={"A": 0.5},
        start=pd.Timestamp("2020-01-02", tz="UTC"),
        out=Path("/tmp/o"),
        inner=Inner(rate=0.2),
        flag=True,
    )
    plain = json.loads(json.dumps(c.to_dict()))
    assert plain["symbols"] == ["A", "B"] and plain["inner"] == {"rate": 0.2, "mode": "a"}
    assert Outer.from_dict(plain) == c


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "n", "cuont": 1}, "Outer: unknown key 'cuont'; did you mean 'count'?"),
        ({"name": "n", "count": "5"}, "Outer.count: expected int, got '5'"),
        ({"name": "n", "count": True}, "Outer.count: expected int, got True"),
        ({"name": "n", "symbols": "AB"}, "Outer.symbols: expected a list, got 'AB'"),
        ({"name": "n", "symbols": ["A", 2]}, "Outer.symbols[1]: expected str, got 2"),
        ({"name": "n", "inner": {"rate": "fast"}}, "Outer.inner.rate: expected float, got 'fast'"),
        ({"name": "n", "inner": {"speed": 1}}, "Outer.inner: unknown key 'speed'"),
        ({"name": "n", "flag": "yes"}, "Outer.flag: expected bool, got 'yes'"),
    ],
)
def test_wrong_keys_and_types_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Outer.from_dict(data)
    assert str(info.value).startswith(message)


def test_ints_are_accepted_for_floats() -> None:
    assert Inner.from_dict({"rate": 1}).rate == 1.0
