"""Serving without a server: payloads, the handler in-process, the circuit breaker, Signal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlmodels.registry import ModelRegistry
from serving.client import (
    CircuitBreaker,
    InProcessClient,
    RestClient,
    RestConfig,
    ServingUnavailable,
)
from serving.payload import BadRequest, decode, encode_binary, encode_json
from serving.signal import PositionState, Signal
from tests.serving_util import WINDOW, feature_names, register_preset, windows

FEATS = feature_names()


def test_binary_and_json_payloads_round_trip() -> None:
    w = windows(3)
    pos = np.array([[1, 0.1, 3], [0, 0, 0], [-1, -0.2, 9]], dtype=np.float32)
    for body in (
        encode_binary(w, pos, ["A", "B", "C"], ["t0", "t1", "t2"]),
        json.dumps(encode_json(w, pos, ["A", "B", "C"], ["t0", "t1", "t2"])).encode(),
        encode_json(w, pos, ["A", "B", "C"], ["t0", "t1", "t2"]),
    ):
        b = decode(body, window=WINDOW, features=FEATS, max_windows=10)
        np.testing.assert_array_equal(b.windows, w)
        np.testing.assert_array_equal(b.positions, pos)
        assert b.symbols == ["A", "B", "C"] and b.timestamps == ["t0", "t1", "t2"]
    flat = decode(encode_binary(w), window=WINDOW, features=FEATS, max_windows=10)
    assert not flat.positions.any() and flat.symbols == [None] * 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "neither the binary format"),
        (b"BTML\x01\x00", "shorter than the 24-byte header"),
        (encode_binary(windows(2))[:-100], "needs at least"),
        (b"not json", "neither the binary format"),
        (json.dumps({"rows": []}).encode(), "needs a 'windows' key"),
        (json.dumps({"windows": [[1, 2], [3]]}).encode(), "equally long lists"),
        (json.dumps({"windows": [[1.0, 2.0]]}).encode(), "must be 3-dimensional"),
        (
            encode_binary(windows(1, window=5)),
            "expected windows of 16 bars x 51 features, received 5 bars",
        ),
        (encode_binary(windows(11)), "11 windows in one request; at most 10"),
        (encode_binary(windows(0)), "no windows"),
        (encode_binary(windows(2), symbols=["only one"]), "1 symbols for 2 windows"),
    ],
)
def test_bad_bodies_say_what_was_expected(body, message) -> None:
    with pytest.raises(BadRequest, match=message):
        decode(body, window=WINDOW, features=FEATS, max_windows=10)


def test_non_finite_values_name_window_bar_and_feature() -> None:
    w = windows(2)
    w[1, 3, 7] = np.inf
    with pytest.raises(BadRequest, match=rf"window 1 \(B\), bar 3: feature {FEATS[7]} is inf"):
        decode(encode_binary(w, symbols=["A", "B"]), window=WINDOW, features=FEATS, max_windows=10)
    pos = np.zeros((2, 3), dtype=np.float32)
    pos[0, 1] = np.nan
    with pytest.raises(BadRequest, match="window 0: position state"):
        decode(encode_binary(windows(2), pos), window=WINDOW, features=FEATS, max_windows=10)


def test_in_process_client_runs_the_handler_and_refuses_bad_input(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    register_preset(reg, "tiny", "m")
    client = InProcessClient.from_registry(tmp_path, "m")
    pos = [PositionState(position=1, unrealised=0.05, bars_held=4), PositionState()]
    sigs = client.predict(windows(2), pos, symbols=["A", "B"], timestamps=["2024-01-02", None])
    assert [s.symbol for s in sigs] == ["A", "B"] and sigs[0].timestamp == "2024-01-02"
    assert all(s.model == "m" and s.version == 1 and s.horizons == (1, 4, 24) for s in sigs)
    assert all(s.is_finite() and 0 <= s.confidence <= 1 and 0 <= s.size <= 1 for s in sigs)
    assert sigs[0] != sigs[1]  # the position state reaches the heads
    with pytest.raises(BadRequest, match=f"received {WINDOW} bars x 3 features"):
        client.predict(windows(1)[:, :, :3])
    assert len(client.predict(windows(1))) == 1  # a refused request leaves the handler usable


def test_signal_dict_round_trip_and_accessors() -> None:
    s = Signal(
        model="m", version=3, returns=(0.01, -0.02, 0.05), horizons=(1, 4, 24),
        direction=(0.2, 0.3, 0.5), action=(0.1, 0.2, 0.7), size=0.4, volatility=0.02,
        risk=0.03, confidence=0.8, symbol="X", timestamp="2024-01-02T00:00:00+00:00",
    )  # fmt: skip
    assert Signal.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.p_up == 0.5 and s.best_action == "buy" and s.expected_return(4) == -0.02
    with pytest.raises(
        ValueError, match=r"horizon 2 is not predicted; this model predicts \[1, 4, 24\]"
    ):
        s.expected_return(2)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_circuit_breaker_opens_cools_down_and_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=2, cooldown=5.0, clock=clock)
    b.failure()
    b.check()  # one failure: still closed
    b.failure()
    assert b.state == "open"
    with pytest.raises(ServingUnavailable, match=r"not calling it for 5.0 s more"):
        b.check()
    clock.t += 5.0
    assert b.state == "half-open"
    b.check()  # the trial call may go
    b.failure()  # the trial failed: open again for a full cooldown
    assert b.state == "open"
    clock.t += 5.0
    b.success()
    assert b.state == "closed" and b.count == 0


def test_rest_client_fails_fast_when_nothing_listens() -> None:
    from tests.serving_util import free_ports

    (port,) = free_ports(1)
    cfg = RestConfig(
        url=f"http://127.0.0.1:{port}", model="m", token="t", retries=1, backoff=0.01,
        breaker_failures=2,
    )  # fmt: skip
    with RestClient(cfg) as c:
        for _ in range(2):
            with pytest.raises(ServingUnavailable, match="did not answer after 2 attempts"):
                c.predict(windows(1))
        with pytest.raises(ServingUnavailable, match="circuit breaker open"):
            c.predict(windows(1))


def test_rest_config_is_checked() -> None:
    from core.errors import ConfigError

    for bad in ({"deadline_s": 0}, {"connect_timeout": -1.0}, {"read_timeout": 0}):
        with pytest.raises(ConfigError, match="read_timeout must be > 0"):
            RestConfig(model="m", **bad)
    for bad in ({"retries": -1}, {"breaker_failures": 0}, {"breaker_cooldown": -0.1}):
        with pytest.raises(ConfigError, match="breaker_failures >= 1"):
            RestConfig(model="m", **bad)
    # the limits themselves are allowed: no retry, a breaker that opens at once, no cooldown
    edge = RestConfig(model="m", retries=0, breaker_failures=1, breaker_cooldown=0.0)
    assert (edge.retries, edge.breaker_failures, edge.breaker_cooldown) == (0, 1, 0.0)
    with RestClient(edge) as c:  # and the client builds its breaker from them
        assert (c.breaker.failures, c.breaker.cooldown) == (1, 0.0)


def test_a_header_claiming_huge_counts_is_refused_before_allocating() -> None:
    import struct
    import tracemalloc

    from serving.payload import HEADER, MAGIC

    no_values = HEADER.pack(MAGIC, 1, 0, 1 << 23, 0, 0, 0) + struct.pack("<I", 0)
    huge_window = HEADER.pack(MAGIC, 1, 0, 1, 1 << 20, 1 << 10, 0) + struct.pack("<I", 0)
    tracemalloc.start()
    try:
        with pytest.raises(BadRequest, match=r"8388608 windows in one request; at most 10"):
            decode(no_values, window=WINDOW, features=FEATS, max_windows=10)
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < 1 << 20, f"{peak / 1e6:.0f} MB allocated before the counts were checked"
        with pytest.raises(BadRequest, match="received 1048576 bars x 1024 features"):
            decode(huge_window, window=WINDOW, features=FEATS, max_windows=10)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"5", "JSON body must be an object"),
        (b'["windows"]', "JSON body must be an object"),
        (json.dumps({"windows": [[[0.0] * 51] * 16], "symbols": 5}).encode(), "symbols must be"),
        (json.dumps({"windows": [[[0.0] * 51] * 16], "timestamps": "t"}).encode(), "timestamps"),
        (encode_binary(windows(1))[:-4] + b"\x02\x00\x00\x00[]", "metadata must be a JSON object"),
    ],
)
def test_malformed_json_and_metadata_are_bad_requests(body, message) -> None:
    with pytest.raises(BadRequest, match=message):
        decode(body, window=WINDOW, features=FEATS, max_windows=10)


def test_a_hung_server_costs_one_deadline_per_call() -> None:
    import socket
    import time

    with socket.socket() as hung:  # connections complete in the kernel; nothing ever answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        cfg = RestConfig(
            url=f"http://127.0.0.1:{hung.getsockname()[1]}", model="m", token="t",
            read_timeout=10.0, retries=2, deadline_s=1.0, breaker_failures=2,
        )  # fmt: skip
        with RestClient(cfg) as c:
            for _ in range(2):
                t0 = time.monotonic()
                with pytest.raises(ServingUnavailable, match="did not answer"):
                    c.predict(windows(1))
                assert time.monotonic() - t0 < 3.0  # was 3 x 10 s read timeouts
            t0 = time.monotonic()
            with pytest.raises(ServingUnavailable, match="circuit breaker open"):
                c.predict(windows(1))
            assert time.monotonic() - t0 < 0.5


def test_client_errors_are_not_retried_and_do_not_count_toward_the_breaker() -> None:
    from brokers.alpaca.sim.loopback import LoopbackServer, Reply

    path = "/predictions/m"
    bad = {"code": 400, "type": "BadRequest", "message": "expected windows of 16 bars x 51"}
    with LoopbackServer() as srv:
        srv.route("POST", path, Reply(400, bad))
        cfg = RestConfig(url=srv.base_url, model="m", token="t", retries=2, backoff=0.01,
                         breaker_failures=1)  # fmt: skip
        with RestClient(cfg) as c:
            for _ in range(3):
                with pytest.raises(BadRequest, match="expected windows of 16 bars x 51"):
                    c.predict(windows(1))
            assert srv.hits("POST", path) == 3  # one request per call: none retried
            assert c.breaker.state == "closed" and c.breaker.count == 0
            srv.route("POST", path, Reply(405, {"message": "Method not allowed"}))
            with pytest.raises(BadRequest, match=r"HTTP 405\): Method not allowed"):
                c.predict(windows(1))
            assert srv.hits("POST", path) == 4 and c.breaker.state == "closed"
            srv.route("POST", path, Reply(500, {"message": "worker died"}))
            with pytest.raises(ServingUnavailable, match="HTTP 500: worker died"):
                c.predict(windows(1))
            assert srv.hits("POST", path) == 7  # a server fault is retried
            assert c.breaker.state == "open"  # and counted
        assert srv.errors == []


def test_a_garbled_answer_is_a_serving_failure() -> None:
    from brokers.alpaca.sim.loopback import LoopbackServer, Reply

    with LoopbackServer() as srv:
        cfg = RestConfig(url=srv.base_url, model="m", token="t", retries=0, breaker_failures=2)
        with RestClient(cfg) as c:
            for answer in (Reply(200, "<html>proxy error</html>"), Reply(200, [{"model": "m"}])):
                srv.route("POST", "/predictions/m", answer)
                with pytest.raises(ServingUnavailable, match="unreadable answer"):
                    c.predict(windows(1))
            assert c.breaker.state == "open"


def test_a_refused_token_is_re_read_once_then_a_serving_failure(tmp_path) -> None:
    from brokers.alpaca.sim.loopback import LoopbackServer, Reply
    from serving.client import TokenRefused

    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "old"}}))
    refused = Reply(400, {"code": 400, "type": "InvalidKeyException", "message": "Token expired"})
    with LoopbackServer() as srv:
        srv.route("POST", "/predictions/m", refused)
        cfg = RestConfig(url=srv.base_url, model="m", key_file=key_file, retries=2)
        with RestClient(cfg) as c:
            with pytest.raises(TokenRefused, match=r"token .*refused.*key_file\.json"):
                c.predict(windows(1))
            sent = [r.headers["Authorization"] for r in srv.requests]
            assert sent == ["Bearer old", "Bearer old"]  # re-read once, not retried further
            key_file.write_text(json.dumps({"inference": {"key": "new"}}))
            sig = Signal(
                model="m", version=1, returns=(0.0, 0.0, 0.0), horizons=(1, 4, 24),
                direction=(0.2, 0.3, 0.5), action=(0.1, 0.2, 0.7), size=0.4, volatility=0.02,
                risk=0.03, confidence=0.8,
            )  # fmt: skip
            srv.route("POST", "/predictions/m", lambda r: Reply(
                200 if r.headers["Authorization"] == "Bearer new" else 401, [sig.to_dict()]))  # fmt: skip
            assert c.predict(windows(1)) == [sig]  # a rotated key is picked up
        with RestClient(RestConfig(url=srv.base_url, model="m", token="fixed")) as c:
            srv.route("POST", "/predictions/m", Reply(401, {"message": "Unauthorized"}))
            with pytest.raises(ServingUnavailable, match="token .*refused"):
                c.predict(windows(1))
    assert issubclass(TokenRefused, ServingUnavailable)
