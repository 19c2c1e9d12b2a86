"""Named symbol universes: ``small``, ``medium``, ``large`` US stocks, ``etfs`` and ``crypto``.

They are TODAY's constituents, not point-in-time ones: names that left (delisted, acquired,
dropped from the index) are missing, so a backtest over them picks the survivors in advance.
Every report built on a universe says so (:func:`survivorship_warning`) unless a point-in-time
membership file (``feeds.membership``) says who was a member when.
"""

from __future__ import annotations

from core.errors import unknown_name

_SMALL = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "JPM", "JNJ", "XOM", "PG")
_MEDIUM_MORE = (
    "BRK-B",
    "V",
    "UNH",
    "HD",
    "MA",
    "PFE",
    "KO",
    "PEP",
    "BAC",
    "CSCO",
    "ORCL",
    "INTC",
    "CVX",
    "MRK",
    "ABT",
    "WMT",
    "DIS",
    "MCD",
    "NKE",
    "ADBE",
    "CRM",
    "T",
    "VZ",
    "CMCSA",
    "QCOM",
    "TXN",
    "HON",
    "IBM",
    "AMGN",
    "CAT",
    "GS",
    "MS",
    "BA",
    "MMM",
    "GE",
    "LLY",
    "COST",
    "SBUX",
    "LOW",
    "UPS",
)
_LARGE_MORE = (
    "AMD",
    "AVGO",
    "TSLA",
    "NFLX",
    "PYPL",
    "ABBV",
    "TMO",
    "DHR",
    "MDT",
    "BMY",
    "GILD",
    "CVS",
    "CI",
    "ELV",
    "ISRG",
    "SYK",
    "ZTS",
    "BDX",
    "REGN",
    "VRTX",
    "C",
    "WFC",
    "AXP",
    "BLK",
    "SCHW",
    "SPGI",
    "MCO",
    "CB",
    "PGR",
    "USB",
    "LIN",
    "APD",
    "SHW",
    "ECL",
    "NEM",
    "FCX",
    "DOW",
    "DD",
    "NUE",
    "VMC",
    "COP",
    "EOG",
    "SLB",
    "PSX",
    "MPC",
    "OXY",
    "KMI",
    "WMB",
    "DUK",
    "SO",
    "NEE",
    "D",
    "AEP",
    "EXC",
    "SRE",
    "PLD",
    "AMT",
    "CCI",
    "EQIX",
    "SPG",
    "DE",
    "LMT",
    "RTX",
    "GD",
    "NOC",
    "UNP",
    "CSX",
    "NSC",
    "FDX",
    "EMR",
)
_ETFS = (
    "SPY",
    "QQQ",
    "IWM",
    "DIA",
    "^VIX",
    "XLK",
    "XLF",
    "XLE",
    "XLV",
    "XLY",
    "XLP",
    "XLI",
    "XLB",
    "XLU",
    "XLRE",
    "XLC",
    "TLT",
    "GLD",
)
_CRYPTO = (
    "BTC/USD",
    "ETH/USD",
    "SOL/USD",
    "LTC/USD",
    "BCH/USD",
    "LINK/USD",
    "AVAX/USD",
    "DOGE/USD",
)

UNIVERSES: dict[str, tuple[str, ...]] = {
    "small": _SMALL,
    "medium": _SMALL + _MEDIUM_MORE,
    "large": _SMALL + _MEDIUM_MORE + _LARGE_MORE,
    "etfs": _ETFS,
    "crypto": _CRYPTO,
}


def get_universe(name: str) -> tuple[str, ...]:
    """The symbols of the universe ``name``."""
    if name in UNIVERSES:
        return UNIVERSES[name]
    raise unknown_name("universe", name, UNIVERSES)


def survivorship_warning(name: str) -> str:
    """The warning every report over universe ``name`` without point-in-time membership carries."""
    return (
        f"survivorship: {name} is today's constituents, not point-in-time; give --membership FILE"
    )
