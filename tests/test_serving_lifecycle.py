"""TorchServe's lifecycle against real processes and files.

What reaches the server's environment, whose process ``stop`` may signal, where each instance
keeps its sockets and unpacked models, how tokens are rotated and refused, the archive's pin in
the model registry (checked at start, register and scale), and log rotation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from btml.cli import main
from core.errors import CorruptFileError
from mlmodels.registry import ModelRegistry
from serving.archive import build_archive, sha256_file
from serving.client import RestClient, RestConfig, ServingUnavailable
from serving.payload import HEADER, MAGIC
from serving.server import ServerConfig, group_pids, read_key, start, stop
from tests.serving_util import cli_ports, register_preset, server_config, windows

pytestmark = pytest.mark.timeout(600)

SECRETS = {
    "APCA_API_KEY_ID": "PKLEAKCHECK0001",
    "APCA_API_SECRET_KEY": "leak-check-secret-0002",
    "SOME_SERVICE_TOKEN": "leak-check-token-0003",
}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def worker_pids(pgid: int) -> list[int]:
    return [p for p in group_pids(pgid) if any("model_service_worker" in a for a in cmdline(p))]


def rest(cfg: ServerConfig, model: str = "m", **kw: object) -> RestClient:
    return RestClient(RestConfig(url=cfg.inference_url, model=model, key_file=cfg.key_file, **kw))  # type: ignore[arg-type]


def rotate_inference_key(cfg: ServerConfig) -> None:
    """TorchServe's own token API: a new inference key, written to key_file.json."""
    api_key = json.loads(cfg.key_file.read_text())["API"]["key"]
    r = requests.get(
        f"{cfg.management_url}/token?type=inference",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server: model ``m``, the model API on (register), small logs that must rotate."""
    root = tmp_path_factory.mktemp("lifecycle")
    reg = ModelRegistry(root / "models")
    register_preset(reg, "tiny", "m")
    register_preset(reg, "tiny", "m2", seed=5)
    cfg = server_config(
        root / "serving", enable_model_api=True, log_max_bytes=16_384, log_backups=2
    )
    (cfg.home / "logs").mkdir(parents=True)
    (cfg.home / "logs" / "server.out").write_bytes(b"old launcher output\n" * 2000)  # 40 kB
    state = start(cfg, [build_archive(reg, "m:1", cfg.model_store)])
    yield cfg, reg
    stop(cfg)
    assert group_pids(state.pgid) == []


def test_no_secret_reaches_torchserve_or_its_workers(tmp_path, monkeypatch) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("UNRELATED_SETTING", "not-for-torchserve")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reg = ModelRegistry(tmp_path / "models")
    register_preset(reg, "tiny", "m")
    cfg = server_config(tmp_path / "serving")
    state = start(cfg, [build_archive(reg, "m:1", cfg.model_store)])
    try:
        pids = group_pids(state.pgid)
        java = [p for p in pids if "org.pytorch.serve.ModelServer" in cmdline(p)]
        workers = worker_pids(state.pgid)
        assert java and workers, [cmdline(p)[:3] for p in pids]
        for pid in pids:
            env = environ(pid)
            leaked = sorted(k for k, v in env.items() if k in SECRETS or v in SECRETS.values())
            assert leaked == [], f"{cmdline(pid)[:2]} (pid {pid}) can read {leaked}"
            assert "UNRELATED_SETTING" not in env  # an allow-list, not only a deny-list
        assert environ(workers[0]).get("OMP_NUM_THREADS") == "1"  # thread settings pass
        with rest(cfg) as c:  # and the workers still serve without the rest of the env
            assert len(c.predict(windows(2))) == 2
        props = dict(
            line.split("=", 1)
            for line in (cfg.home / "config.properties").read_text().splitlines()
            if "=" in line
        )
        deny = re.compile(props["blacklist_env_vars"])
        for name in (*SECRETS, "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "ALPACA_API_KEY"):
            assert deny.fullmatch(name), name
        for name in ("PATH", "PYTHONPATH", "OMP_NUM_THREADS", "LANG", "TEMP", "LOG_LOCATION"):
            assert not deny.fullmatch(name), name
        ts_log = (cfg.home / "logs" / "ts_log.log").read_text()
        assert f"Blacklist Regex: {props['blacklist_env_vars']}" in ts_log  # TorchServe took it
    finally:
        stop(cfg)
    assert group_pids(state.pgid) == []


def _fake_state(pid: int, **identity: object) -> dict[str, object]:
    return {"pid": pid, "pgid": pid, "inference_port": 1, "management_port": 2,
            "metrics_port": 3, "models": {"m": [1]}, "defaults": {"m": 1}, **identity}  # fmt: skip


def test_stop_never_signals_a_process_the_state_file_does_not_identify(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "serving"
    home.mkdir()
    state_file = home / "server.json"
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    runner = CliRunner()
    try:
        # a pid reused by an unrelated process: the recorded start time and command differ
        stale = _fake_state(
            sleeper.pid, start_time=1, cmdline=["/usr/bin/python3", "/x/bin/torchserve", "--start"]
        )
        state_file.write_text(json.dumps(stale))
        res = runner.invoke(main, ["--store", ".", "serve", "status"])
        assert res.exit_code == 3, res.output
        assert "stale" in res.output and str(sleeper.pid) in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        res = runner.invoke(main, ["--store", ".", "serve", "stop"])
        assert res.exit_code == 0, res.output
        assert "stale" in res.output and "Traceback" not in res.output
        time.sleep(0.5)
        assert sleeper.poll() is None, "serve stop signalled an unrelated process"
        assert not state_file.exists()
        res = runner.invoke(main, ["--store", ".", "serve", "status"])
        assert res.exit_code == 3 and "not running" in res.output
        # a state file without the process identity (an older btml wrote it): never signalled
        state_file.write_text(json.dumps(_fake_state(sleeper.pid)))
        res = runner.invoke(main, ["--store", ".", "serve", "stop"])
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        time.sleep(0.5)
        assert sleeper.poll() is None, "serve stop signalled an unverified process"
        state_file.write_text("{not json")
        res = runner.invoke(main, ["--store", ".", "serve", "status"])
        assert res.exit_code == 3 and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stop_ends_the_servers_processes_when_its_launcher_died(tmp_path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    register_preset(reg, "tiny", "m")
    cfg = server_config(tmp_path / "serving")
    state = start(cfg, [build_archive(reg, "m:1", cfg.model_store)])
    try:
        os.kill(state.pid, signal.SIGKILL)  # the launcher dies; Java and its worker live on
        deadline = time.monotonic() + 10
        while state.pid in group_pids(state.pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group_pids(state.pgid), "nothing left to stop: the test proves nothing"
    finally:
        stop(cfg)
    assert group_pids(state.pgid) == []
    assert not cfg.state_file.exists()


@pytest.mark.slow
def test_two_servers_side_by_side_keep_their_own_sockets_and_stop_independently(
    tmp_path,
) -> None:
    cfgs = []
    for name in ("a", "b"):
        reg = ModelRegistry(tmp_path / name / "models")
        register_preset(reg, "tiny", "m", seed=len(cfgs))
        cfg = server_config(tmp_path / name / "serving")
        cfgs.append((cfg, build_archive(reg, "m:1", cfg.model_store)))
    states = []
    try:
        for cfg, mar in cfgs:
            states.append(start(cfg, [mar]))
        listening = Path("/proc/net/unix").read_text()
        for (cfg, _), state in zip(cfgs, states, strict=True):
            workers = worker_pids(state.pgid)
            assert workers
            args = cmdline(workers[0])
            sock = Path(args[args.index("--sock-name") + 1])
            assert sock.is_relative_to(cfg.home), f"{sock} is outside {cfg.home}"
            assert str(sock) in listening and sock.exists()
            assert any((cfg.home / "tmp" / "models").iterdir())  # the unpacked archive
            with rest(cfg) as c:
                assert len(c.predict(windows(1))) == 1
        (a, _), (b, _) = cfgs
        b_args = cmdline(worker_pids(states[1].pgid)[0])
        b_sock = Path(b_args[b_args.index("--sock-name") + 1])
        stop(a)
        assert group_pids(states[0].pgid) == []
        assert b_sock.exists(), "stopping one server removed the other's socket"
        with rest(b) as c:
            assert len(c.predict(windows(1))) == 1
    finally:
        for cfg, _ in cfgs:
            stop(cfg)
    assert all(group_pids(s.pgid) == [] for s in states)


def test_a_refused_token_is_a_serving_failure_and_a_rotated_one_is_followed(
    server, tmp_path
) -> None:
    cfg, _ = server
    with rest(cfg, retries=0) as c:
        assert len(c.predict(windows(1))) == 1  # the token is now cached in the client
        old = read_key(cfg)
        rotate_inference_key(cfg)
        assert read_key(cfg) != old
        assert len(c.predict(windows(1))) == 1  # refused once, key file re-read, retried
    wrong = tmp_path / "key_file.json"
    keys = json.loads(cfg.key_file.read_text())
    keys["inference"]["key"] = "not-the-key"
    wrong.write_text(json.dumps(keys))
    client = RestClient(
        RestConfig(url=cfg.inference_url, model="m", key_file=wrong, breaker_failures=5)
    )
    with pytest.raises(ServingUnavailable, match=r"token .*refused") as err:
        client.predict(windows(1))
    assert str(wrong) in str(err.value) and "\n" not in str(err.value)


def test_a_strategy_holds_when_the_token_is_refused(server, tmp_path) -> None:
    from analyzers.backtest import run_backtest
    from feeds.sample import load_sample
    from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
    from strategies.sizing import FixedFraction
    from strategies.windows import FeatureWindows
    from tests.serving_util import WINDOW, feature_names

    cfg, _ = server
    wrong = tmp_path / "key_file.json"
    wrong.write_text(json.dumps({"inference": {"key": "expired-or-wrong"}}))
    s = load_sample(adjusted=True)
    frames = {k: s[k].loc["2009-01-01":"2010-03-31"] for k in ("AAPL", "IBM")}
    client = RestClient(
        RestConfig(url=cfg.inference_url, model="m", key_file=wrong, retries=0, backoff=0.01)
    )
    mcfg = MLSignalConfig(sizer=FixedFraction(fraction=0.2), serving_failure="hold")
    windows = FeatureWindows.build(frames, feature_names(), WINDOW)
    run = run_backtest(
        "ml", frames, MLSignalStrategy,
        strategy_kwargs={"config": mcfg, "client": client, "windows": windows},
    )  # fmt: skip
    assert run.strategy.serving_failures > 0
    assert run.stats.trades == 0


@pytest.mark.slow
def test_an_expired_token_fails_calls_until_it_is_renewed(tmp_path) -> None:
    from serving.server import renew_token

    reg = ModelRegistry(tmp_path / "models")
    register_preset(reg, "tiny", "m")
    cfg = server_config(tmp_path / "serving", token_expiration_min=0.25)  # 15 s
    state = start(cfg, [build_archive(reg, "m:1", cfg.model_store)])
    try:
        with rest(cfg, retries=0, breaker_failures=10) as c:
            assert len(c.predict(windows(1))) == 1
            expires = json.loads(cfg.key_file.read_text())["inference"]["expiration time"]
            time.sleep(16)
            with pytest.raises(ServingUnavailable, match=r"refused.*btml serve renew-token"):
                c.predict(windows(1))
            renew_token(cfg, "inference")
            assert json.loads(cfg.key_file.read_text())["inference"]["expiration time"] > expires
            assert len(c.predict(windows(1))) == 1
    finally:
        stop(cfg)
    assert group_pids(state.pgid) == []


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"5", "application/octet-stream"),
        (b'"windows"', "application/octet-stream"),
        (json.dumps({"windows": [[[0.0] * 51] * 16], "symbols": 5}).encode(), "text/plain"),
        (
            HEADER.pack(MAGIC, 1, 0, 1, 16, 51, 0) + bytes(16 * 51 * 4) + b"\2\0\0\0[]",
            "application/octet-stream",
        ),
    ],
)
def test_malformed_bodies_get_400_and_a_message_not_500(server, body, ctype) -> None:
    cfg, _ = server
    r = requests.post(
        f"{cfg.inference_url}/predictions/m",
        data=body,
        headers={"Authorization": f"Bearer {read_key(cfg)}", "Content-Type": ctype},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "BadRequest"


def _foreign_archive(tmp_path: Path, name: str, version: int, seed: int) -> Path:
    """A valid archive of the same name and version built elsewhere (other weights)."""
    other = ModelRegistry(tmp_path / f"other-{name}")
    for v in range(version):
        register_preset(other, "tiny", name, seed=seed + v)
    return build_archive(other, f"{name}:{version}", tmp_path / f"other-store-{name}")


def _substitute(pinned: Path, foreign: Path) -> str:
    """Replace ``pinned`` and its sidecar, as someone with write access to the folder could."""
    shutil.copyfile(foreign, pinned)
    actual = sha256_file(pinned)
    pinned.with_name(pinned.name + ".sha256").write_text(f"{actual}  {pinned.name}\n")
    return actual


def test_a_substituted_archive_is_refused_at_start_even_with_a_matching_sidecar(
    tmp_path,
) -> None:
    reg = ModelRegistry(tmp_path / "models")
    register_preset(reg, "tiny", "m")
    cfg = server_config(tmp_path / "serving", startup_timeout_s=60)
    mar = build_archive(reg, "m:1", cfg.model_store)
    pinned = sha256_file(mar)
    actual = _substitute(mar, _foreign_archive(tmp_path, "m", 1, seed=9))
    try:
        with pytest.raises(CorruptFileError) as err:
            start(cfg, [mar])
        cmd = ["--store", str(tmp_path), "serve", "start", "m:1", *cli_ports(cfg)]
        res = CliRunner().invoke(main, cmd)
    finally:
        stop(cfg)
    msg = str(err.value)
    assert str(mar) in msg and pinned in msg and actual in msg and "\n" not in msg
    assert not cfg.state_file.exists()
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert pinned in res.output and len(res.output.strip().splitlines()) <= 2
    assert reg.card("m:1").archives == {str(mar.resolve()): pinned}  # the pin is in the card


def test_register_and_scale_check_the_pin_on_every_load(server, tmp_path) -> None:
    from serving.server import register, scale

    cfg, reg = server
    m2 = build_archive(reg, "m2:1", cfg.model_store)
    pinned = sha256_file(m2)
    actual = _substitute(m2, _foreign_archive(tmp_path, "m2", 1, seed=11))
    with pytest.raises(CorruptFileError, match=f"{re.escape(str(m2))}.*{pinned}.*{actual}"):
        register(cfg, m2)
    headers = {"Authorization": f"Bearer {read_key(cfg, 'management')}"}
    assert requests.get(f"{cfg.management_url}/models/m2", headers=headers, timeout=5).status_code == 404  # fmt: skip
    build_archive(reg, "m2:1", cfg.model_store)  # rebuilt from the registry: pinned again
    register(cfg, cfg.model_store / "m2.v1.mar")
    with rest(cfg, "m2") as c:
        assert len(c.predict(windows(1))) == 1
    m1 = cfg.model_store / "m.v1.mar"
    good = m1.read_bytes()
    pinned = sha256_file(m1)
    actual = _substitute(m1, _foreign_archive(tmp_path, "m", 1, seed=13))
    try:
        with pytest.raises(CorruptFileError, match=f"{pinned}.*{actual}"):
            scale(cfg, "m", 1, workers=2)
    finally:
        m1.write_bytes(good)
    info = requests.get(f"{cfg.management_url}/models/m/1", headers=headers, timeout=5).json()
    assert len(info[0]["workers"]) == 1  # not scaled from a substituted archive
    scale(cfg, "m", 1, workers=2)
    info = requests.get(f"{cfg.management_url}/models/m/1", headers=headers, timeout=5).json()
    assert len(info[0]["workers"]) == 2


def test_logs_rotate_by_size(server) -> None:
    cfg, _ = server
    logs = cfg.home / "logs"
    with rest(cfg) as c:
        for _ in range(300):  # a few log lines per request
            c.predict(windows(1))
    time.sleep(1.0)  # let the log appenders flush
    for name in ("ts_log.log", "model_log.log"):
        files = sorted(logs.glob(name + "*"))
        assert (logs / f"{name}.1").exists(), f"{name} never rolled over: {files}"
        assert len(files) <= 3, files  # the live file and log_backups=2 old ones
        for f in files:
            assert f.stat().st_size <= 16_384 + 4_096, f
    # the launcher's output from before this start was set aside, not appended to forever
    assert (logs / "server.out.1").stat().st_size >= 40_000
    assert (logs / "server.out").stat().st_size < 16_384
