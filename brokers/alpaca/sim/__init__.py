"""A loopback Alpaca: trading and market-data servers on 127.0.0.1, for offline runs.

The real alpaca-py clients (and ``AlpacaStore`` / ``AlpacaBroker`` on top of them) run against
these servers unchanged, by URL override: the tests, the benchmarks and offline demos use them
instead of Alpaca's paper endpoints. They follow the official Trading API and market-data specs
and the protocol alpaca-py speaks, with bodies shaped like the responses recorded from Alpaca;
none of this is needed for a backtest or for live trading.

- ``trading``: ``AlpacaFake``, a stateful Trading API v2 (account, orders with bracket legs,
  positions, fills) and its ``trade_updates`` websocket, with injectable faults, rate limits and
  malformed answers (``first_only``, ``set_field``).
- ``data``: ``AlpacaDataFake``, the stock and crypto bar streams (msgpack or JSON frames, one
  connection per key) and the historical bars REST endpoints, replaying the bars pushed to it.
- ``loopback``: ``LoopbackServer``, a small HTTP server with routes, request recording and fault
  injection, which serves recorded responses to any client library (Alpaca, ccxt, TorchServe).

Import the submodules (``from brokers.alpaca.sim.trading import AlpacaFake``); this package
itself imports nothing, so no server code loads with ``brokers.alpaca``.
"""
