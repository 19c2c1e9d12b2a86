"""``btml data ...`` end to end through click: import, list, validate, universes, synth, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from btml.cli import main
from feeds.store import ParquetStore
from feeds.universes import UNIVERSES
from tests.conftest import LONG_CSV, YF_REPAIR, parquet_files


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


def btml(store_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(store_dir), *args])


def _one_error_line(res: Result) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in res.output
    return lines[0]


# ------------------------------------------------------------------ import, list, validate


def test_import_then_list_then_validate(store_dir: Path) -> None:
    res = btml(
        store_dir, "data", "import", str(YF_REPAIR / "CALM-1d-no-bad-divs.csv"), "--symbol", "CALM"
    )
    assert res.exit_code == 0, res.output
    path = store_dir / "raw/stocks/1Day/CALM.parquet"
    assert res.stdout.splitlines()[0] == f"CALM: 662 rows, gaps 0.00% -> {path}"
    assert res.stdout.splitlines()[1].startswith("run ")  # no NYSE session missing

    res = btml(store_dir, "data", "list")
    assert res.exit_code == 0, res.output
    fields = res.stdout.split()
    assert fields[:5] == ["stocks", "1Day", "CALM", "662", "rows"]
    assert fields[5:9] == ["2022-01-03", "..", fields[7], "csv"]

    res = btml(store_dir, "data", "validate")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("ok      CALM: 662 rows")

    frame = ParquetStore(store_dir).read("CALM")
    raw = pd.read_csv(YF_REPAIR / "CALM-1d-no-bad-divs.csv")
    assert frame["close"].tolist() == raw["Close"].tolist()


def test_import_long_file_with_adjust(store_dir: Path, tmp_path: Path) -> None:
    csv = tmp_path / "long.csv"
    csv.write_text(LONG_CSV)
    res = btml(store_dir, "data", "import", str(csv), "--adjust")
    assert res.exit_code == 0, res.output
    assert [line.split(":")[0] for line in res.stdout.splitlines()[:-1]] == ["AAPL", "IBM"]
    store = ParquetStore(store_dir)
    assert store.read("IBM")["close"].iloc[0] == pytest.approx(73.667718762847)
    assert store.read("AAPL").attrs["adjustment"] == "adjusted"
    res = btml(store_dir, "data", "validate", "AAPL", "IBM")
    assert res.exit_code == 0 and res.stdout.count("ok ") == 2


def test_import_of_the_missed_split_warns_and_validate_fails(store_dir: Path) -> None:
    csv = str(YF_REPAIR / "4063-T-1d-bad-stock-split.csv")
    res = btml(store_dir, "data", "import", csv, "--symbol", "4063.T")
    assert res.exit_code == 0, res.output
    assert "newest-first file: rows reversed" in res.stdout  # reversing loses nothing
    assert "possible unadjusted split 5:1 at 2023-03-29" in res.stdout
    assert "warning: check the findings above" in res.stderr

    res = btml(store_dir, "data", "validate")
    assert res.exit_code == 1  # the check failed: a suspected split
    assert res.stdout.startswith("warning 4063.T: 22 rows")


def test_import_of_a_bad_csv_exits_2_and_writes_nothing(store_dir: Path, tmp_path: Path) -> None:
    # AAPL is fine, IBM has a bar with high below low: the import is all or nothing
    csv = tmp_path / "bad.csv"
    csv.write_text(
        LONG_CSV.replace("IBM,2000-03-02,100.5,105.44,99.5", "IBM,2000-03-02,100.5,95.44,99.5")
    )
    res = btml(store_dir, "data", "import", str(csv))
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        f"error: {csv}: 1 of 6 rows break a rule; nothing was imported. Fix them, or import the "
        "rest with --drop-invalid (the rejected rows are kept in a file beside the store):",
        "  line 5: IBM '2000-03-02': high < low [rule: high>=low]",
    ]
    assert res.stdout == ""
    assert parquet_files(store_dir) == []
    assert btml(store_dir, "data", "list").stdout.startswith("the store at")


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (
            "Date,Open,High,Low,Close,Volume\nyesterday,1,2,0.5,1.5,10\n",
            [],
            "line 2: IN 'yesterday': unreadable date [rule: date]",
        ),
        ("Date,Open,Close,Volume\n2020-01-02,1,1.5,10\n", [], "has open but no high, low column"),
        (
            "Datetime,Open,High,Low,Close,Volume\n2020-01-02 09:30,1,2,0.5,1.5,10\n",
            ["--timeframe", "1m"],
            "timestamps have no timezone",
        ),
        (
            "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,-1.5,10\n",
            [],
            "price <= 0 [rule: positive]",
        ),
        (LONG_CSV, ["--symbol", "MSFT"], "no rows for MSFT; the file holds AAPL, IBM"),
        (LONG_CSV, ["--timeframe", "2d"], "unknown timeframe '2d'"),
    ],
)
def test_import_errors_are_one_line(
    store_dir: Path, tmp_path: Path, text: str, args: list[str], message: str
) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text(text)
    res = btml(store_dir, "data", "import", str(csv), *args)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and "Traceback" not in res.output
    assert message in res.stderr
    assert parquet_files(store_dir) == []


def test_import_with_tz(store_dir: Path, tmp_path: Path) -> None:
    csv = tmp_path / "X.csv"
    csv.write_text("Datetime,Open,High,Low,Close,Volume\n2020-01-02 09:30,1,2,0.5,1.5,10\n")
    res = btml(
        store_dir, "data", "import", str(csv), "--timeframe", "1m", "--tz", "America/New_York"
    )
    assert res.exit_code == 0, res.output
    f = ParquetStore(store_dir).read("X", "1m")
    assert list(f.index) == [pd.Timestamp("2020-01-02 14:30", tz="UTC")]


def test_import_of_a_missing_file_is_a_usage_error(store_dir: Path, tmp_path: Path) -> None:
    res = btml(store_dir, "data", "import", str(tmp_path / "nope.csv"))
    assert res.exit_code == 2
    assert "does not exist" in res.stderr


def test_list_reports_a_corrupt_file_and_still_lists_the_rest(store_dir: Path) -> None:
    for name, sym in (("CALM-1d-no-bad-divs.csv", "CALM"), ("EWG-1d-no-bad-divs.csv", "EWG")):
        assert (
            btml(store_dir, "data", "import", str(YF_REPAIR / name), "--symbol", sym).exit_code == 0
        )
    broken = store_dir / "raw/stocks/1Day/EWG.parquet"
    broken.write_bytes(b"garbage")

    res = btml(store_dir, "data", "list")
    assert res.exit_code == 1
    assert "CALM" in res.stdout and "EWG" not in res.stdout
    line = _one_error_line(res)
    assert str(broken) in line

    res = btml(store_dir, "data", "validate")
    assert res.exit_code == 1
    assert res.stdout.startswith("ok      CALM")
    assert str(broken) in _one_error_line(res)


def test_validate_accepts_timeframe_aliases(store_dir: Path) -> None:
    csv = str(YF_REPAIR / "CALM-1d-no-bad-divs.csv")
    assert btml(store_dir, "data", "import", csv, "--symbol", "CALM").exit_code == 0
    res = btml(store_dir, "data", "validate", "--timeframe", "1d")
    assert res.exit_code == 0
    assert res.stdout.startswith("ok      CALM: 662 rows")
    res = btml(store_dir, "data", "validate", "--timeframe", "2d")
    assert res.exit_code == 2
    assert "unknown timeframe '2d'" in _one_error_line(res)


def test_validate_of_an_unknown_symbol(store_dir: Path) -> None:
    res = btml(store_dir, "data", "validate", "NOPE")
    assert res.exit_code == 2
    assert "NOPE (1Day) is not in the store" in _one_error_line(res)


def test_list_of_an_empty_store(store_dir: Path) -> None:
    res = btml(store_dir, "data", "list")
    assert res.exit_code == 0
    assert res.stdout.strip() == f"the store at {store_dir} is empty"


# -------------------------------------------------------------------------- universes


def test_universes_lists_small_medium_large(store_dir: Path) -> None:
    res = btml(store_dir, "data", "universes")
    assert res.exit_code == 0
    lines = {line.split(" ")[0]: line for line in res.stdout.splitlines()}
    assert {"small", "medium", "large"} <= set(lines)
    assert lines["small"].startswith("small (10): AAPL MSFT")
    assert lines["medium"].startswith("medium (50): ")
    assert lines["large"].startswith("large (120): ")
    small, medium, large = (set(UNIVERSES[k]) for k in ("small", "medium", "large"))
    assert small < medium < large
    for name, syms in UNIVERSES.items():
        assert len(set(syms)) == len(syms), name


def test_download_needs_symbols_or_a_known_universe(store_dir: Path) -> None:
    res = btml(store_dir, "data", "download")
    assert res.exit_code == 2
    assert "give SYMBOLS or --universe NAME" in res.stderr
    res = btml(store_dir, "data", "download", "--universe", "smal")
    assert res.exit_code == 2
    assert "unknown universe 'smal'" in _one_error_line(res)
    assert "did you mean 'small'" in res.stderr


# ------------------------------------------------------------------------------ synth


def test_synth_then_list_and_validate(store_dir: Path) -> None:
    pytest.importorskip("feeds.sources.synthetic")
    res = btml(store_dir, "data", "synth", "--symbols", "2", "--bars", "60", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert "stored 2 synthetic symbols x 60 bars" in res.stdout
    res = btml(store_dir, "data", "list")
    assert res.exit_code == 0
    assert {"SYN000", "SYN001"} <= set(res.stdout.split())
    assert btml(store_dir, "data", "validate").exit_code == 0


def test_synth_random_walk_with_planted_is_refused(store_dir: Path) -> None:
    """A random walk has no plant: asking for both is one line, exit 2, nothing stored."""
    res = btml(store_dir, "data", "synth", "--random-walk", "--planted", "0.3", "--bars", "60")
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "--random-walk" in line and "--planted" in line
    assert not store_dir.exists() or not parquet_files(store_dir)


# ------------------------------------------------------------------------------- help


def _command_paths(cmd: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            paths += _command_paths(sub, (*prefix, name))
    return paths


def test_help_works_for_every_command(store_dir: Path) -> None:
    paths = _command_paths(main)
    assert {
        ("data",),
        ("data", "import"),
        ("data", "list"),
        ("data", "validate"),
        ("data", "universes"),
        ("data", "download"),
        ("data", "synth"),
        ("demo",),
    } <= set(paths)
    for path in paths:
        for flag in ("--help", "-h"):
            res = CliRunner().invoke(main, [*path, flag])
            assert res.exit_code == 0, (path, flag, res.output)
            assert res.stdout.startswith("Usage: "), path
            assert res.stderr == ""
    assert not (store_dir).exists()  # --help touches nothing


def test_version() -> None:
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0
    assert "0.1.0" in res.stdout


def test_installed_btml_script_help() -> None:
    script = Path(sys.executable).parent / "btml"
    assert script.exists(), f"the console script is not installed at {script}"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: btml")
    assert "data" in proc.stdout and "demo" in proc.stdout
