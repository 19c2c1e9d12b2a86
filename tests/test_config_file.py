"""``--config FILE.toml`` on the commands that run something: the file gives defaults, flags win,
an unknown key or a wrong type names the key and the file, and nothing is written then."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from btml.cli import main
from feeds.store import ParquetStore

BAD_ROWS = Path(__file__).parent / "fixtures" / "import" / "aapl_2012_bad_rows.csv"


def btml(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(tmp_path / "store"), *args])


def test_the_file_sets_options_and_the_run_records_them(tmp_path: Path) -> None:
    cfg = tmp_path / "import.toml"
    cfg.write_text('symbol = "AAPL"\ndrop-invalid = true\n')
    res = btml(tmp_path, "data", "import", str(BAD_ROWS), "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert len(ParquetStore(tmp_path / "store").read("AAPL")) == 238
    run_id = res.stdout.splitlines()[-1].removeprefix("run ")
    record = json.loads(btml(tmp_path, "runs", "show", run_id, "--json").stdout)
    assert record["params"]["options"]["symbol"] == "AAPL"
    assert record["params"]["drop_invalid"] is True


def test_flags_win_and_a_table_named_after_the_command_is_used(tmp_path: Path) -> None:
    cfg = tmp_path / "all.toml"
    cfg.write_text(
        '[import]\nsymbol = "ZZ"\ndrop_invalid = true\n\n[backtest]\nstart = "2012-01-01"\n'
    )
    res = btml(tmp_path, "data", "import", str(BAD_ROWS), "--config", str(cfg), "--symbol", "YY")
    assert res.exit_code == 0, res.output
    assert [s.symbol for s in ParquetStore(tmp_path / "store").list()[0]] == ["YY"]


def test_an_unknown_key_is_named_with_the_file_and_nothing_is_written(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('simbol = "AAPL"\n')
    res = btml(tmp_path, "data", "import", str(BAD_ROWS), "--config", str(cfg))
    assert res.exit_code == 2
    assert f"{cfg}: unknown key 'simbol'; did you mean 'symbol'?" in res.stderr
    assert "Traceback" not in res.output
    assert not (tmp_path / "store").exists()


def test_a_wrong_type_is_named_with_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('bars = "many"\n')
    res = btml(tmp_path, "data", "synth", "--config", str(cfg))
    assert res.exit_code == 2
    assert f"{cfg}: bars = 'many': 'many' is not a valid integer" in res.stderr
    assert not (tmp_path / "store").exists()


def test_a_file_that_is_not_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("symbol = \n")
    res = btml(tmp_path, "data", "import", str(BAD_ROWS), "--config", str(cfg))
    assert res.exit_code == 2 and "is not valid TOML" in res.stderr


def test_the_commands_that_run_something_take_a_config_file(tmp_path: Path) -> None:
    for args in (
        ["backtest"],
        ["train"],
        ["walkforward"],
        ["stress"],
        ["trade"],
        ["data", "import"],
    ):
        res = btml(tmp_path, *args, "--help")
        assert res.exit_code == 0 and "--config FILE" in res.stdout, args


def test_a_backtest_config_file_is_checked_before_anything_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "bt.toml"
    cfg.write_text('[backtest]\nsymbols = "AAPL"\nbaseline = "sma"\nslipage = 0.001\n')
    res = btml(tmp_path, "backtest", "--config", str(cfg))
    assert res.exit_code == 2
    assert f"{cfg}: unknown key 'slipage'" in res.stderr
    assert not (tmp_path / "store").exists()
