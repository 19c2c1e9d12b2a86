"""Users' feature modules: loaded from a path, a module name or an entry point, every function
truncation-tested (a leak names the feature and the first differing row), and
``btml features check-leakage`` on tables and modules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from btml.cli import main
from core.errors import ConfigError, DataError
from feeds.sample import load_sample
from feeds.store import ParquetStore
from mlmodels.features import FEATURE_NAMES, WARMUP, compute_features
from mlmodels.leakage import FeatureLeakError
from mlmodels.user_features import load_checked, load_feature_module

HONEST = """
import numpy as np
import pandas as pd

def range_position(bars: pd.DataFrame, **kwargs) -> pd.Series:
    low, high = bars["low"].rolling(10).min(), bars["high"].rolling(10).max()
    return (bars["close"] - low) / (high - low)

def log_volume(bars):
    return np.log1p(bars["volume"].to_numpy())

FEATURES = {"range_pos_10": range_position, "log_volume": log_volume}
WARMUP = 9
"""

LEAKY = """
import numpy as np
import pandas as pd

def _r(bars):
    return np.log(bars["close"]).diff()

def centred_ma(bars):
    return bars["close"].rolling(5, center=True).mean() / bars["close"] - 1

def ret_ahead_2(bars):
    return _r(bars).shift(-2)

def fwd_vol_20(bars):
    return _r(bars).rolling(20).std().shift(-20)

def zscore_all(bars):
    c = bars["close"]
    return (c - c.mean()) / c.std()

def weak(bars):  # an average of past returns and a twentieth of tomorrow's, in units of 2 %
    r = _r(bars)
    return r.rolling(14).mean() / 0.02 + 0.05 * r.shift(-1) / 0.02

def honest(bars):
    return _r(bars).rolling(5).mean()

FEATURES = {"honest": honest, "centred_ma": centred_ma, "ret_ahead_2": ret_ahead_2,
            "fwd_vol_20": fwd_vol_20, "zscore_all": zscore_all, "weak": weak}
"""

# future data joined from outside the bars: truncating the bars does not remove it
OUTSIDE = """
import numpy as np
from feeds.sample import load_sample

_CLOSE = {s: f["close"] for s, f in load_sample(adjusted=True).items()}

def tomorrow_hint(bars):
    c = _CLOSE[bars.attrs["symbol"]]
    r = np.log(c).diff()
    past = r.rolling(10).mean() / r.std()
    return (past + 0.1 * r.shift(-1) / r.std()).reindex(bars.index)

FEATURES = {"tomorrow_hint": tomorrow_hint}
"""


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    s = load_sample(adjusted=True)
    return {"IBM": s["IBM"].iloc[:700]}


def test_an_honest_module_passes_and_extends_the_features(tmp_path, frames) -> None:
    user = load_checked(str(write(tmp_path, "mine.py", HONEST)), frames)
    assert user.names == ("range_pos_10", "log_volume") and user.warmup == 9
    assert user.total_warmup == WARMUP
    both = user.compute_with(frames["IBM"])
    assert tuple(both.columns) == (*compute_features(frames["IBM"]).columns, *user.names)
    assert both["log_volume"].iloc[-1] == pytest.approx(np.log1p(frames["IBM"]["volume"].iloc[-1]))
    card = user.card()
    assert card["names"] == ["range_pos_10", "log_volume"] and card["sha256"] == user.digest
    assert len(user.digest) == 64 and (card["warmup"], card["builtin"]) == (9, True)


@pytest.mark.parametrize(
    ("name", "first_row"),
    [
        ("centred_ma", 348),  # rolling(5, center=True): rows 348, 349 need bars after the cut
        ("ret_ahead_2", 348),
        ("fwd_vol_20", 330),
        ("zscore_all", 0),  # every row uses the whole sample's mean and deviation
        ("weak", 349),
    ],
)
def test_each_leaky_function_fails_the_truncation_test(tmp_path, frames, name, first_row) -> None:
    user = load_feature_module(str(write(tmp_path, "leaky.py", LEAKY)))
    found = {f.feature: f for f in user.findings(frames["IBM"])}
    assert set(found) == {"centred_ma", "ret_ahead_2", "fwd_vol_20", "zscore_all", "weak"}
    assert found[name].detail.startswith(f"row {first_row} ")


def test_training_refuses_a_leaky_module_in_one_line(tmp_path, frames) -> None:
    path = write(tmp_path, "leaky.py", LEAKY)
    with pytest.raises(FeatureLeakError) as err:
        load_checked(str(path), frames)
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, DataError)  # a UserError: exit 2
    assert msg.startswith(f"{path}: feature centred_ma reads the future on IBM: row 348 (")
    assert "no rolling(center=True)" in msg


def test_future_data_from_outside_the_bars_is_caught_by_the_statistical_test(tmp_path) -> None:
    s = load_sample(adjusted=True)
    user = load_feature_module(str(write(tmp_path, "outside.py", OUTSIDE)))
    assert user.findings(s["MSFT"]) == []  # truncation cannot see it
    ((sym, f),) = user.scan({"MSFT": s["MSFT"]})
    assert (sym, f.feature, f.check) == ("MSFT", "tomorrow_hint", "future-information")


def test_module_by_name_and_by_entry_point(tmp_path, monkeypatch, frames) -> None:
    pkg = tmp_path / "acme_feats"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "signals.py").write_text(textwrap.dedent(HONEST))
    dist = tmp_path / "acme_feats-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-feats\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[btml.features]\nacme = acme_feats.signals\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_feature_module("acme_feats.signals").names == ("range_pos_10", "log_volume")
    user = load_feature_module("acme")
    assert user.source == "acme" and user.names == ("range_pos_10", "log_volume")
    with pytest.raises(ConfigError, match="did you mean 'acme'"):
        load_feature_module("acm")


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ("x = 1\n", ConfigError, "define FEATURES"),
        ("FEATURES = {'rsi_14': len}\n", ConfigError, "rsi_14 is a built-in feature"),
        ("FEATURES = {'a': lambda b: b['close']}\nWARMUP = -1\n", ConfigError, "WARMUP"),
        ("raise RuntimeError('boom')\n", ConfigError, "RuntimeError: boom"),
        ("FEATURES = {'a': lambda b: b['nope']}\n", DataError, "feature a failed on IBM"),
        ("FEATURES = {'a': lambda b: b['close'].iloc[:-1]}\n", DataError, "another index"),
        ("FEATURES = {'a': lambda b: [1.0, 2.0]}\n", DataError, r"shape \(2,\)"),
    ],
)
def test_bad_modules_say_what_to_fix(tmp_path, frames, source, error, match) -> None:
    with pytest.raises(error, match=match):
        load_checked(str(write(tmp_path, "bad.py", source)), frames)


def test_strict_reports_a_nan_after_the_modules_warmup(tmp_path, frames) -> None:
    src = "FEATURES = {'late': lambda b: b['close'].rolling(30).mean()}\nWARMUP = 10\n"
    user = load_feature_module(str(write(tmp_path, "late.py", src)))
    with pytest.raises(DataError, match=r"feature late is not a finite number at .* \(bar 10\)"):
        user.compute_with(frames["IBM"])
    assert "late" not in FEATURE_NAMES


# -- the command --------------------------------------------------------------------------------


def run(tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["--store", str(tmp_path / "store"), "features", *args])


def test_cli_table_lists_each_leak_once(tmp_path) -> None:
    frame = load_sample(adjusted=True)["MSFT"]
    close = frame["close"]
    r = np.log(close).diff()
    tab = pd.concat([frame, compute_features(frame)], axis=1).assign(
        centred=close.rolling(5, center=True).mean() / close - 1,
        ahead=r.shift(-2),
        fwd_vol=r.rolling(20).std().shift(-20),
    )
    tab = tab.iloc[WARMUP:-30].copy()
    tab["zscore"] = (tab["close"] - tab["close"].mean()) / tab["close"].std()
    tab.to_parquet(tmp_path / "feats.parquet")
    res = run(tmp_path, "check-leakage", "--file", str(tmp_path / "feats.parquet"))
    assert res.exit_code == 1, res.output
    leaks = sorted(line.split()[2] for line in res.output.splitlines() if line.startswith("LEAK"))
    assert leaks == ["ahead", "centred", "fwd_vol", "zscore"]


def test_cli_module_and_bad_input(tmp_path) -> None:
    ParquetStore(tmp_path / "store").write(load_sample(adjusted=True)["IBM"].iloc[:700])
    leaky = write(tmp_path, "leaky.py", LEAKY)
    res = run(tmp_path, "check-leakage", "IBM", "--file", str(leaky))
    assert res.exit_code == 1
    assert res.output.count("LEAK") == 5 and "weak (truncation): row 349" in res.output
    honest = write(tmp_path, "mine.py", HONEST)
    res = run(tmp_path, "check-leakage", "IBM", "--features-module", str(honest))
    assert res.exit_code == 0, res.output
    assert f"no leakage found (1 series, module {honest})" in res.output
    bad = write(tmp_path, "bad.py", "x = 1\n")
    res = run(tmp_path, "check-leakage", "IBM", "--features-module", str(bad))
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "define FEATURES" in res.output
    assert run(tmp_path, "check-leakage").exit_code == 2  # nothing to check
