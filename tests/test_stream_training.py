"""Streaming presets trained and evaluated on whole streams (issue "backtests at the speed of
the model"): truncated BPTT pieces cover every training sample once and never cross a symbol
or a purge gap; predictions come from each symbol's stream run from its start, equal to stepping
the network bar by bar, whichever samples are asked for; a trained ``tiny-stream`` learns a
planted signal out of sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.dataset import DatasetConfig, build_dataset
from mlmodels.nets.model import ARCHITECTURES, build_model
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.stream import piece_batch, stream_paths, stream_starts, tbptt_pieces
from mlmodels.trainer import TrainConfig, Trainer

WINDOW = 20


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ds():
    frames = generate_market(SyntheticConfig(n_symbols=3, n_bars=500, seed=5))
    data = build_dataset(frames, DatasetConfig(window=WINDOW))
    data.fit_scaler(np.arange(len(data)))
    return data


def _model(ds, arch: str = "tiny-stream"):
    torch.manual_seed(0)
    return build_model(ARCHITECTURES[arch].with_data(len(ds.feature_names), WINDOW)).eval()


def test_pieces_cover_each_training_sample_once_within_runs(ds) -> None:
    train = np.concatenate([np.arange(0, 150), np.arange(170, 400), np.arange(420, len(ds))])
    pieces = tbptt_pieces(ds, train, 64, np.random.default_rng(0))
    covered = np.concatenate([p.samples for p in pieces])
    assert sorted(covered.tolist()) == sorted(train.tolist())
    for p in pieces:
        assert 1 <= len(p.samples) <= 64
        assert len(set(ds.sample_symbol[p.samples])) == 1  # one symbol
        assert (np.diff(ds.sample_row[p.samples]) == 1).all()  # consecutive bars, no gap
        assert p.first_row == ds.sample_row[p.samples[0]] - WINDOW + 1
    other = tbptt_pieces(ds, train, 64, np.random.default_rng(1))
    assert [len(p.samples) for p in other] != [len(p.samples) for p in pieces]  # new phase
    warm, x, pos, samples = piece_batch(ds, pieces[:4])
    assert warm.shape[1] == WINDOW - 1 and x.shape[:2] == samples.shape
    p = pieces[0]
    np.testing.assert_array_equal(x[0, 0].numpy(), ds.rows[ds.sample_row[p.samples[0]]])


def test_stream_predictions_equal_stepping_from_the_stream_start(ds) -> None:
    model = _model(ds)
    k = 1
    mine = np.flatnonzero(ds.sample_symbol == k)
    asked = mine[[0, 5, 77, len(mine) - 1]]
    got = stream_paths(model, ds, asked)
    start = stream_starts(ds)[k]
    x = torch.from_numpy(ds.rows[start : ds.sample_row[asked[-1]] + 1])[None]
    with torch.no_grad():
        seq, _ = model.paths_sequence(x, model.init_state(1))
    want = seq[0, torch.from_numpy(ds.sample_row[asked] - start)]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    alone = stream_paths(model, ds, asked[2:3])  # the same, whatever else is asked
    torch.testing.assert_close(alone[0], got[2], rtol=1e-5, atol=1e-5)


def test_tbptt_training_runs_on_streams_and_respects_max_batches(ds, tmp_path: Path) -> None:
    model = _model(ds)
    idx = np.arange(len(ds))
    train, val = idx[idx % 10 < 7], idx[idx % 10 >= 7]
    cfg = TrainConfig(epochs=2, batch_size=64, tbptt=16, max_batches=5, seed=0, threads=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = Trainer(model, ds, train, val, cfg, tmp_path).fit()
    assert len(state.history) == 2 and np.isfinite(state.history[-1]["val_loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_tiny_stream_learns_a_planted_signal_out_of_sample(tmp_path: Path) -> None:
    frames = generate_market(SyntheticConfig(n_symbols=4, n_bars=1500, seed=3,
                                             planted_strength=0.3))  # fmt: skip
    _, card = train_model(
        frames, "tiny-stream", name="stream", registry=ModelRegistry(tmp_path),
        train_cfg=TrainConfig(epochs=6, batch_size=64, patience=3, seed=0, threads=1),
        data_cfg=DatasetConfig(window=60),
    )  # fmt: skip
    test = card.metrics["test"]
    assert test["price_1_ic"] > 0.08  # the planted AR(1) at 1 bar; zero without learning
