"""Causal, stationary technical features for one symbol (and optionally its market index).

``compute_features(ohlcv, index=None)`` returns one float64 column per registered feature:
returns, trend, momentum, volatility, volume, temporal and (with an index frame) index-relative
families, about 60 columns in all. ``FEATURES`` is the registry (name, family, formula, window,
warm-up, ta reference) and the single source of truth for names and order; docs/FEATURES.md
shows it as a table.

Guarantees, each proved by tests/test_features.py:

* causal: the row at ``t`` uses bars ``<= t`` only (index bars too): truncating the input
  truncates the output and changes nothing else;
* ``WARMUP`` bars before the first complete row; with ``strict=True`` any NaN or infinite value
  after it raises :class:`core.errors.DataError` naming the feature, the symbol and the date;
* every feature ta also computes equals ta's value (relative tolerance 1e-6) after the warm-up.

Everything is vectorised (pandas' compiled rolling and ``ewm`` kernels, numpy), including the
indicators ta runs as Python loops (ATR, ADX); see benchmarks/bench_features.py.

Example::

    from feeds.sample import load_sample
    from mlmodels.features import compute_features, WARMUP

    frames = load_sample(adjusted=True)
    feats = compute_features(frames["AAPL"])
    train_rows = feats.iloc[WARMUP:]
"""

from __future__ import annotations

from mlmodels.features._compute import align_index, compute_features
from mlmodels.features._registry import (
    FAMILIES,
    FEATURE_NAMES,
    FEATURES,
    INDEX_FEATURE_NAMES,
    SETTLE_TOL,
    WARMUP,
    FeatureSpec,
    feature_names,
    feature_specs,
    feature_table,
)

__all__ = [
    "FAMILIES",
    "FEATURES",
    "FEATURE_NAMES",
    "INDEX_FEATURE_NAMES",
    "SETTLE_TOL",
    "WARMUP",
    "FeatureSpec",
    "align_index",
    "compute_features",
    "feature_names",
    "feature_specs",
    "feature_table",
]
