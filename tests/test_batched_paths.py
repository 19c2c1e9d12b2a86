"""Batched path scoring (issue "backtests at the speed of the model"): the cache answers exactly
what scoring each window on its own answers, splits chunks at the request limit, and never
looks at bars after the one asked for."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from feeds.sample import load_sample
from mlmodels.features import FEATURES
from strategies.batched import PathCache
from strategies.windows import FeatureWindows

NAMES = [f.name for f in FEATURES[:51]]
WINDOW = 16
rng = np.random.default_rng(0)
PROJ = rng.normal(size=(WINDOW * len(NAMES), 4))


def score(windows: np.ndarray) -> np.ndarray:
    """A deterministic function of each window alone (row by row, so batching cannot change
    it): stands in for nothing; the cache is what is tested here."""
    return np.stack([w.reshape(-1).astype(np.float64) @ PROJ for w in windows])


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    s = load_sample(adjusted=True)
    cut = {"AAPL": "2007-01-01", "IBM": "2007-03-01", "MSFT": "2007-01-01"}
    return {k: s[k].loc[start:"2009-12-31"] for k, start in cut.items()}


@pytest.fixture(scope="module")
def windows(frames) -> FeatureWindows:
    return FeatureWindows.build(frames, NAMES, WINDOW)


def _bars(windows: FeatureWindows) -> list[tuple[str, int]]:
    return sorted(((s, int(t)) for s, f in windows.symbols.items() for t in f.times),
                  key=lambda k: (k[1], k[0]))  # fmt: skip


def test_every_summary_equals_the_window_scored_alone(windows) -> None:
    cache = PathCache(windows, score, chunk=50, max_request=64)
    seen = 0
    for sym, ts in _bars(windows):  # the order a backtest asks in
        win = windows.symbols[sym].window_at(ts, WINDOW)
        got = cache.get(sym, ts)
        if win is None:
            assert got is None
            continue
        np.testing.assert_array_equal(got, score(win[None])[0])
        seen += 1
    assert seen > 1500 and cache.windows_scored == seen  # each window scored once
    # 50 bars ahead for 3 symbols is up to 150 windows: a fill is split at 64
    assert cache.requests >= 3 * (seen // 150)


def test_a_chunk_larger_than_the_server_accepts_is_split(windows) -> None:
    sizes: list[int] = []

    def limited(w: np.ndarray) -> np.ndarray:
        assert len(w) <= 100, "the server refuses more than 100 windows"
        sizes.append(len(w))
        return score(w)

    cache = PathCache(windows, limited, chunk=400, max_request=100)
    start = int(windows.symbols["AAPL"].times[-450])
    assert cache.get("AAPL", start) is not None
    assert max(sizes) == 100 and len(sizes) > 3


def test_a_prediction_at_t_never_changes_when_bars_after_t_are_added(frames) -> None:
    full = PathCache(FeatureWindows.build(frames, NAMES, WINDOW), score, chunk=500)
    for cut in ("2008-09-30", "2009-03-31"):
        short = {k: f.loc[:cut] for k, f in frames.items()}
        part = PathCache(FeatureWindows.build(short, NAMES, WINDOW), score, chunk=500)
        for sym, f in short.items():
            for ts in pd.DatetimeIndex(f.index).as_unit("ns").asi8[-30:]:
                a, b = part.get(sym, int(ts)), full.get(sym, int(ts))
                assert (a is None) == (b is None)
                if a is not None:
                    np.testing.assert_array_equal(a, b)


def test_a_scorer_answering_the_wrong_shape_is_an_error(windows) -> None:
    cache = PathCache(windows, lambda w: np.zeros((len(w) + 1, 2)), chunk=10)
    sym, ts = _bars(windows)[-1]
    with pytest.raises(ValueError, match="shape"):
        cache.get(sym, ts)
    with pytest.raises(ValueError, match="chunk"):
        PathCache(windows, score, chunk=0)


# -- the served model's paths and heads, in-process ----------------------------------------------
@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlmodels.pipeline import register_untrained
    from mlmodels.registry import ModelRegistry

    reg = ModelRegistry(tmp_path_factory.mktemp("batched") / "models")
    cards = {arch: register_untrained(reg, arch, arch, features=NAMES, window=WINDOW)
             for arch in ("tiny", "task-ensemble", "tiny-stream")}  # fmt: skip
    return reg, cards


@pytest.mark.parametrize("arch", ["tiny", "task-ensemble", "tiny-stream"])
def test_paths_then_heads_equal_one_forward(registered, windows, arch: str) -> None:
    """To float32 rounding: the same window scored in batches of other sizes differs in the
    last bits (the matrix kernels block by batch size; measured up to 1e-6 for every preset,
    as TorchServe's dynamic batching already does), never more."""
    from serving.client import InProcessClient

    reg, cards = registered
    client = InProcessClient.from_registry(reg.root, cards[arch].ref, threads=1)
    sym = "AAPL"
    feats = windows.symbols[sym]
    ts = [int(t) for t in feats.times[-40:]]
    wins = np.stack([feats.window_at(t, WINDOW) for t in ts])
    pos = rng.normal(size=(len(ts), 3)).astype(np.float32)
    stamps = [str(t) for t in ts]
    direct = client.predict(wins, pos, symbols=[sym] * len(ts), timestamps=stamps)
    cache = PathCache(windows, client.paths, chunk=300, max_request=7)  # scored in other batches
    summaries = np.stack([cache.get(sym, t) for t in ts])
    via = client.from_paths(summaries, pos, symbols=[sym] * len(ts), timestamps=stamps)
    for a, b in zip(via, direct, strict=True):
        da, db = a.to_dict(), b.to_dict()
        for key, value in db.items():
            if isinstance(value, float | list) and key != "horizons":
                np.testing.assert_allclose(da[key], value, rtol=1e-5, atol=2e-6, err_msg=key)
            else:
                assert da[key] == value, key


def test_a_server_limit_below_the_request_is_split_not_failed(registered, windows) -> None:
    from serving.client import InProcessClient
    from serving.payload import TooManyWindows

    reg, cards = registered
    client = InProcessClient.from_registry(reg.root, cards["tiny"].ref, threads=1)
    client.handler.max_windows = 5
    with pytest.raises(TooManyWindows) as err:
        client.paths(np.zeros((6, WINDOW, len(NAMES)), np.float32))
    assert err.value.limit == 5
    cache = PathCache(windows, client.paths, chunk=20, max_request=64)
    ts = int(windows.symbols["MSFT"].times[-10])
    assert cache.get("MSFT", ts) is not None
    assert cache.max_request == 5 and cache.requests >= 6  # 3 x up to 20 windows, 5 at a time


def test_a_failed_fill_changes_nothing_and_the_next_lookup_asks_again(windows) -> None:
    from serving.client import ServingUnavailable

    calls = {"n": 0}

    def flaky(w: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ServingUnavailable("the server went away")
        return score(w)

    cache = PathCache(windows, flaky, chunk=30)
    times = [int(t) for t in windows.symbols["IBM"].times[-100:]]
    assert cache.get("IBM", times[0]) is not None  # call 1: the first 30 bars
    with pytest.raises(ServingUnavailable):
        cache.get("IBM", times[40])  # call 2 fails
    got = cache.get("IBM", times[40])  # call 3: asked again, right this time
    np.testing.assert_array_equal(
        got, score(windows.symbols["IBM"].window_at(times[40], WINDOW)[None])[0]
    )
