"""The config model: store precedence (flag, BTML_STORE, default) and credentials never shown."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from btml.cli import main
from btml.config import DEFAULT_STORE, AlpacaCredentials, Config, SourceSettings, load_config
from core.errors import ConfigError
from tests.conftest import YF_REPAIR

KEY = "PKZZTESTKEYID7731QXW"
SECRET = "sEcReTzz9do9not9print4242abcdXYZ"


# ------------------------------------------------------------------------ store location


def test_store_default_env_and_flag_precedence() -> None:
    assert load_config(env={}).store == Path(DEFAULT_STORE)
    assert load_config(env={"BTML_STORE": "/env/store"}).store == Path("/env/store")
    assert load_config("/flag/store", env={"BTML_STORE": "/env/store"}).store == Path("/flag/store")
    assert load_config(Path("/flag/store"), env={}).store == Path("/flag/store")
    assert load_config(env={"BTML_STORE": ""}).store == Path(DEFAULT_STORE)


def test_registry_database_default_env_and_flag_precedence() -> None:
    assert load_config(env={}).db_url is None  # the store's SQLite file
    assert load_config(env={"BTML_DB": "sqlite:////env.db"}).db_url == "sqlite:////env.db"
    flag = load_config(env={"BTML_DB": "sqlite:////env.db"}, db_url="sqlite:////flag.db")
    assert flag.db_url == "sqlite:////flag.db"
    assert load_config(env={"BTML_DB": ""}).db_url is None


def _store_named_by_cli(args: list[str], env: dict[str, str | None]) -> str:
    result = CliRunner().invoke(main, [*args, "data", "list"], env=env)
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("the store at ") and line.endswith(" is empty")
    return line.removeprefix("the store at ").removesuffix(" is empty")


def test_cli_store_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default store is relative to the working folder
    env_store, flag_store = str(tmp_path / "from-env"), str(tmp_path / "from-flag")
    assert _store_named_by_cli([], {"BTML_STORE": None}) == "data_storage"
    assert _store_named_by_cli([], {"BTML_STORE": env_store}) == env_store
    assert _store_named_by_cli(["--store", flag_store], {"BTML_STORE": env_store}) == flag_store


def test_cli_reads_the_store_the_env_names(tmp_path: Path) -> None:
    store = tmp_path / "s"
    runner = CliRunner()
    env = {"BTML_STORE": str(store)}
    res = runner.invoke(
        main,
        ["data", "import", str(YF_REPAIR / "CALM-1d-no-bad-divs.csv"), "--symbol", "CALM"],
        env=env,
    )
    assert res.exit_code == 0, res.output
    assert (store / "raw/stocks/1Day/CALM.parquet").is_file()
    res = runner.invoke(main, ["data", "list"], env=env)
    assert "CALM" in res.stdout and "662 rows" in res.stdout


# ---------------------------------------------------------------------------- settings


def test_config_is_frozen() -> None:
    cfg = load_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.store = Path("elsewhere")  # type: ignore[misc]
    assert isinstance(cfg, Config)


def test_source_settings_from_env() -> None:
    cfg = load_config(
        env={
            "BTML_ALPACA_FEED": "sip",
            "BTML_ALPACA_DATA_URL": "http://127.0.0.1:1",
            "BTML_CCXT_EXCHANGE": "kraken",
        }
    )
    assert cfg.sources == SourceSettings(
        alpaca_feed="sip", alpaca_data_url="http://127.0.0.1:1", ccxt_exchange="kraken"
    )
    assert load_config(env={}).sources == SourceSettings()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, r"timeout_s must be in \(0, 300\], got 0"),
        ({"timeout_s": 301}, "timeout_s"),
        ({"alpaca_feed": "otc"}, "alpaca_feed must be one of"),
    ],
)
def test_source_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SourceSettings(**kwargs)  # type: ignore[arg-type]


def test_bad_env_setting_is_one_clear_cli_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main, ["--store", str(tmp_path), "data", "list"], env={"BTML_ALPACA_FEED": "otc"}
    )
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith("error: alpaca_feed must be one of")
    assert not isinstance(res.exception, ConfigError)  # handled, not a traceback


# ------------------------------------------------------------------------- credentials


def test_credentials_from_env() -> None:
    creds = AlpacaCredentials.from_env({"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET})
    assert creds is not None and (creds.key_id, creds.secret_key) == (KEY, SECRET)
    alt = AlpacaCredentials.from_env({"ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET})
    assert alt is not None and alt.key_id == KEY
    assert AlpacaCredentials.from_env({}) is None
    assert load_config(env={}).alpaca is None


def test_half_set_credentials_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        AlpacaCredentials.from_env({"APCA_API_KEY_ID": KEY})
    assert "APCA_API_SECRET_KEY" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value)


def test_credentials_never_show_in_repr_or_str() -> None:
    env = {"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET, "BTML_STORE": "/x"}
    cfg = load_config(env=env)
    assert cfg.alpaca is not None
    for text in (
        repr(cfg),
        str(cfg),
        repr(cfg.alpaca),
        str(cfg.alpaca),
        f"{cfg}",
        f"{cfg.alpaca!r}",
        f"{cfg.alpaca!s}",
    ):
        assert KEY not in text and SECRET not in text
    assert "***" in repr(cfg.alpaca)
    assert "***" in repr(cfg)  # the masked form appears inside the config's repr


def _all_output(res: Result) -> str:
    return res.stdout + res.stderr + (repr(res.exception) if res.exception else "")


def test_credentials_never_appear_in_cli_output_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        "APCA_API_KEY_ID": KEY,
        "APCA_API_SECRET_KEY": SECRET,
        "BTML_STORE": str(tmp_path / "store"),
    }
    good = tmp_path / "CALM.csv"
    shutil.copy(YF_REPAIR / "CALM-1d-no-bad-divs.csv", good)
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,1,0.5,2,1.5,10\n")
    commands = [
        ["--help"],
        ["data", "--help"],
        ["data", "list"],
        ["data", "import", str(good)],
        ["data", "import", str(bad)],
        ["data", "list"],
        ["data", "validate"],
        ["data", "validate", "NOPE"],
        ["data", "universes"],
        ["data", "download", "--universe", "nope"],
        ["data", "download", "--help"],
    ]
    runner = CliRunner()
    seen_codes = set()
    with caplog.at_level(logging.DEBUG):
        for args in commands:
            res = runner.invoke(main, args, env=env)
            seen_codes.add(res.exit_code)
            out = _all_output(res)
            assert KEY not in out and SECRET not in out, args
            assert out.strip(), args  # every command says something
    assert KEY not in caplog.text and SECRET not in caplog.text
    assert seen_codes == {0, 2}  # the failing commands were exercised too


def test_one_credentials_type_serves_the_cli_the_broker_and_the_data_source() -> None:
    from brokers.alpaca.config import AlpacaConfig
    from core.credentials import AlpacaCredentials as Core
    from feeds.sources.alpaca import AlpacaSource

    assert AlpacaCredentials is Core
    env = {"ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET}  # the alias names work everywhere
    cfg = AlpacaConfig.from_env(env)
    assert (cfg.key_id, cfg.secret_key) == (KEY, SECRET)
    assert cfg.redact(f"{KEY}/{SECRET}") == "***/***"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.delenv("APCA_API_KEY_ID", raising=False)
        mp.delenv("APCA_API_SECRET_KEY", raising=False)
        assert repr(AlpacaSource()).endswith("keys=set)")


def test_the_journal_default_follows_paper_or_live() -> None:
    from brokers.alpaca.config import AlpacaConfig

    paper = AlpacaConfig(key_id=KEY, secret_key=SECRET)
    live = AlpacaConfig(key_id=KEY, secret_key=SECRET, paper=False, live_confirmed=True)
    assert str(paper.journal).endswith("journal-paper.sqlite")
    assert str(live.journal).endswith("journal-live.sqlite")
    chosen = AlpacaConfig(key_id=KEY, secret_key=SECRET, journal="x.sqlite")
    assert chosen.journal == "x.sqlite"
