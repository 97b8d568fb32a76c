"""Epsilon schedules over environment steps, and the per-actor epsilons of Ape-X."""

from __future__ import annotations

import math

import numpy as np


class LinearSchedule:
    """From ``start`` to ``end`` linearly over ``duration`` steps, then constant at ``end``."""

    def __init__(self, start: float, end: float, duration: int):
        self.start, self.end, self.duration = start, end, max(1, duration)

    def __call__(self, step: int) -> float:
        fraction = min(1.0, max(0, step) / self.duration)
        return self.start + fraction * (self.end - self.start)


class ExponentialSchedule:
    """end + (start - end) * exp(-step / duration): one factor of e every ``duration`` steps."""

    def __init__(self, start: float, end: float, duration: int):
        self.start, self.end, self.duration = start, end, max(1, duration)

    def __call__(self, step: int) -> float:
        return self.end + (self.start - self.end) * math.exp(-max(0, step) / self.duration)


class ConstantSchedule:
    def __init__(self, value: float):
        self.value = value

    def __call__(self, step: int) -> float:
        return self.value


def make_schedule(kind: str, start: float, end: float, duration: int):
    if kind == "linear":
        return LinearSchedule(start, end, duration)
    if kind == "exponential":
        return ExponentialSchedule(start, end, duration)
    if kind == "constant":
        return ConstantSchedule(start)
    raise ValueError(f"unknown schedule {kind!r}")


def per_actor_epsilons(num_actors: int, base_epsilon: float = 0.4, alpha: float = 7.0) -> np.ndarray:
    """eps_i = base^(1 + i / (N - 1) * alpha) for i in 0..N-1 (Horgan et al. 2018); one actor gets base."""
    if num_actors == 1:
        return np.array([base_epsilon])
    i = np.arange(num_actors)
    return base_epsilon ** (1.0 + i / (num_actors - 1) * alpha)
