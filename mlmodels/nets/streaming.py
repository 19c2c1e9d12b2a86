"""The streaming state of a model: a flat dict of batch-first tensors.

Every tensor in a state has the stream (session) as its first dimension, so states of single
streams can be concatenated into a batch (:func:`concat_states`) and split back
(:func:`select_state`), and a state is stored with ``torch.save`` / loaded with ``torch.load``
(``weights_only=True`` is enough: plain tensors only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

State = dict[str, Tensor]

STREAM_CHUNK = 64
"""Bars processed together by ``forward_chunk``: the mLSTM's parallel form and the attention
work on at most this many steps at once, so memory stays bounded on long sequences."""


def prefixed(prefix: str, state: State) -> State:
    """``state`` with every key as ``"{prefix}.{key}"``."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: State) -> State:
    """The entries of ``state`` under ``prefix``, without it."""
    head = prefix + "."
    return {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}


def per_step_positions(pos: Tensor, batch_steps: Sequence[int]) -> Tensor:
    """``pos`` as ``(B, T, 3)``: a ``(B, 3)`` position state holds for every step."""
    bsz, steps = batch_steps
    if pos.dim() == 2:
        pos = pos[:, None].expand(bsz, steps, pos.shape[-1])
    if tuple(pos.shape[:2]) != (bsz, steps):
        raise ValueError(
            f"position state of shape {tuple(pos.shape)} does not match {bsz} streams x {steps} bars"
        )
    return pos


def concat_states(states: Sequence[State]) -> State:
    """One state for all the streams of ``states`` (same model), in that order."""
    return {k: torch.cat([s[k] for s in states]) for k in states[0]}


def select_state(state: State, index: Tensor | slice | int) -> State:
    """The streams ``index`` of ``state`` (an ``int`` keeps the batch dimension)."""
    if isinstance(index, int):
        index = slice(index, index + 1)
    return {k: v[index] for k, v in state.items()}


def detach_state(state: State) -> State:
    """``state`` cut from the autograd graph (between chunks of truncated BPTT)."""
    return {k: v.detach() for k, v in state.items()}
