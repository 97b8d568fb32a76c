"""Q-network builders: MLP, Nature CNN, MinAtar CNN; a dueling head and a categorical one; the
input encoding of observations that are not plain arrays of numbers.

Every Q-network maps a batch of observations [B, *obs_shape] to action values [B, num_actions]:
acting, evaluation and priorities read only that. A distributional network (``atoms > 1``, C51)
also has ``logits(obs)`` [B, num_actions, atoms], a categorical distribution of the return over
``support``; its action values are that distribution's means.

Observations are stored as the environment gives them, flattened into one row of numbers where
they are not one array (``envs.py``: Discrete, MultiDiscrete, MultiBinary, Dict, Tuple). An
``InputEncoding`` says how such a row becomes the network's input: each ``Segment`` of the row is
either taken as numbers or, for the indices of a discrete space, one-hot encoded. Replay, actors
and every message between processes carry the compact rows; only the network's first step
(``ObservationEncoder``, or ``encode_numpy`` for the NumPy policy) widens them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Segment:
    """``size`` consecutive values of a stored observation row: numbers (``one_hot`` 0), or
    indices of a discrete space of ``one_hot`` values starting at ``start``, each one-hot encoded."""

    size: int
    one_hot: int = 0
    start: int = 0

    @property
    def width(self) -> int:
        """Network inputs this segment becomes."""
        return self.size * self.one_hot if self.one_hot else self.size


@dataclass(frozen=True)
class InputEncoding:
    """How a stored observation row (``size`` values) becomes ``width`` network inputs."""

    segments: tuple[Segment, ...]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def width(self) -> int:
        return sum(s.width for s in self.segments)

    def columns(self) -> dict[str, np.ndarray]:
        """Where each value of a row goes: ``number_src`` (columns taken as numbers) to
        ``number_dst`` (their input positions); ``index_src`` (columns holding indices), each
        index i to input position ``index_offset + i``, clamped into [``index_lo``, ``index_hi``]
        (its own one-hot block)."""
        cols: dict[str, list[int]] = {k: [] for k in ("number_src", "number_dst", "index_src", "index_offset",
                                                      "index_lo", "index_hi")}
        column = position = 0
        for s in self.segments:
            for _ in range(s.size):
                if s.one_hot:
                    cols["index_src"].append(column)
                    cols["index_offset"].append(position - s.start)
                    cols["index_lo"].append(position)
                    cols["index_hi"].append(position + s.one_hot - 1)
                    position += s.one_hot
                else:
                    cols["number_src"].append(column)
                    cols["number_dst"].append(position)
                    position += 1
                column += 1
        return {k: np.array(v, dtype=np.int64) for k, v in cols.items()}


def encode_numpy(encoding: InputEncoding, obs: np.ndarray) -> np.ndarray:
    """``ObservationEncoder``'s output computed with NumPy: [B, size] rows -> [B, width] float32."""
    c = encoding.columns()
    rows = obs.reshape(len(obs), -1)
    out = np.zeros((len(rows), encoding.width), dtype=np.float32)
    out[:, c["number_dst"]] = rows[:, c["number_src"]]
    if len(c["index_src"]):
        index = np.clip(rows[:, c["index_src"]].astype(np.int64) + c["index_offset"], c["index_lo"], c["index_hi"])
        out[np.arange(len(rows))[:, None], index] = 1.0
    return out


class ObservationEncoder(nn.Module):
    """[B, size] stored rows -> [B, width] float inputs: numbers copied, indices one-hot encoded
    (an index outside its space is clamped into it, never spilled into a neighbour's values).
    No parameters and nothing in the state dict: a network's weights are the same with or without it."""

    def __init__(self, encoding: InputEncoding):
        super().__init__()
        self.encoding = encoding
        for name, values in encoding.columns().items():
            self.register_buffer(name, torch.from_numpy(values), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        rows = obs.flatten(1)
        out = torch.zeros(rows.shape[0], self.encoding.width, device=rows.device)
        out[:, self.number_dst] = rows[:, self.number_src].float()
        if self.index_src.numel():
            index = torch.maximum(torch.minimum(rows[:, self.index_src].long() + self.index_offset,
                                                self.index_hi), self.index_lo)
            out.scatter_(1, index, 1.0)
        return out


class DuelingHead(nn.Module):
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')  (Wang et al. 2016)."""

    def __init__(self, in_features: int, num_actions: int):
        super().__init__()
        self.value = nn.Linear(in_features, 1)
        self.advantage = nn.Linear(in_features, num_actions)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        advantage = self.advantage(features)
        return self.value(features) + advantage - advantage.mean(dim=1, keepdim=True)


class CategoricalHead(nn.Module):
    """C51 (Bellemare et al. 2017): for each action, logits of a categorical distribution of the
    return over ``atoms`` evenly spaced values in [v_min, v_max]. Dueling combines the value and
    advantage streams in logit space, as Rainbow does (Hessel et al. 2018). Calling it gives the
    means, the action values."""

    def __init__(self, in_features: int, num_actions: int, atoms: int, v_min: float, v_max: float,
                 dueling: bool = False):
        super().__init__()
        self.num_actions, self.atoms, self.dueling = num_actions, atoms, dueling
        if dueling:
            self.value = nn.Linear(in_features, atoms)
            self.advantage = nn.Linear(in_features, num_actions * atoms)
        else:
            self.logits_layer = nn.Linear(in_features, num_actions * atoms)
        # not in the state dict: a constant of the config, so weights dicts stay parameters only
        self.register_buffer("support", torch.linspace(v_min, v_max, atoms), persistent=False)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        shape = (features.shape[0], self.num_actions, self.atoms)
        if not self.dueling:
            return self.logits_layer(features).view(shape)
        advantage = self.advantage(features).view(shape)
        return self.value(features)[:, None, :] + advantage - advantage.mean(dim=1, keepdim=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=2) @ self.support


class MLPQNetwork(nn.Module):
    """Fully connected ReLU layers, then a linear, dueling or categorical head. Flattens the
    observation, or encodes it (``encoding``: one-hot indices; ``in_features`` is then its width)."""

    def __init__(self, in_features: int, num_actions: int, hidden_sizes: Sequence[int],
                 dueling: bool = False, atoms: int = 1, v_min: float = -10.0, v_max: float = 10.0,
                 encoding: InputEncoding | None = None):
        super().__init__()
        self.encoder = ObservationEncoder(encoding) if encoding is not None else None
        if encoding is not None and encoding.width != in_features:
            raise ValueError(f"the encoding gives {encoding.width} inputs, not {in_features}")
        sizes = [in_features, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        if atoms > 1:
            self.head = CategoricalHead(sizes[-1], num_actions, atoms, v_min, v_max, dueling)
        else:
            self.head = DuelingHead(sizes[-1], num_actions) if dueling else nn.Linear(sizes[-1], num_actions)
        self.dueling, self.atoms = dueling, atoms

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """The first layer's input: the observation flattened (or encoded) as float32."""
        return self.encoder(obs) if self.encoder is not None else obs.flatten(1).float()

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.encode(obs)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return x

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(obs))

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head.logits(self.features(obs))

    @property
    def support(self) -> torch.Tensor:
        return self.head.support


class TorsoQNetwork(nn.Module):
    """A convolutional torso, then an ``MLPQNetwork`` (``self.mlp``) on its flat features: the
    action values, logits and support are the MLP's on ``_torso(obs)``."""

    mlp: MLPQNetwork

    def _torso(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(self._torso(obs))

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp.logits(self._torso(obs))

    @property
    def atoms(self) -> int:
        return self.mlp.atoms

    @property
    def support(self) -> torch.Tensor:
        return self.mlp.support


class NatureCNN(TorsoQNetwork):
    """The convolutional torso of Mnih et al. (2015) for [B, C, 84, 84] frames (uint8 or float)."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, hidden_sizes: Sequence[int],
                 dueling: bool = False, atoms: int = 1, v_min: float = -10.0, v_max: float = 10.0):
        super().__init__()
        channels = obs_shape[0]
        self.torso = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.torso(torch.zeros(1, *obs_shape)).shape[1]
        self.mlp = MLPQNetwork(flat, num_actions, hidden_sizes, dueling, atoms, v_min, v_max)
        self.scale = 1.0 / 255.0

    def _torso(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        if obs.dtype == torch.uint8:
            x = x * self.scale
        return self.torso(x)


class MinAtarCNN(TorsoQNetwork):
    """The network of the MinAtar paper (Young and Tian 2019): one convolution of 16 3x3 filters,
    stride 1, then fully connected layers ([128] in the paper), for MinAtar's channels-last
    [B, 10, 10, C] boards (boolean or float); they are permuted to [B, C, 10, 10] here."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, hidden_sizes: Sequence[int],
                 dueling: bool = False, atoms: int = 1, v_min: float = -10.0, v_max: float = 10.0):
        super().__init__()
        height, width, channels = obs_shape
        self.torso = nn.Sequential(nn.Conv2d(channels, 16, 3, stride=1), nn.ReLU(), nn.Flatten())
        flat = 16 * (height - 2) * (width - 2)
        self.mlp = MLPQNetwork(flat, num_actions, hidden_sizes, dueling, atoms, v_min, v_max)

    def _torso(self, obs: torch.Tensor) -> torch.Tensor:
        return self.torso(obs.permute(0, 3, 1, 2).float())


def auto_kind(obs_shape: Sequence[int], obs_dtype: np.dtype | str) -> str:
    """The network kind ``network.kind: auto`` takes for these observations: ``nature_cnn`` for
    images [C, H, W] of uint8 with H, W >= 36 (stacked frames, channels first: envs.py puts a
    channels-last image so); ``minatar_cnn`` for small square channels-last boards [H, H, C] of
    bool or uint8 (MinAtar's [10, 10, C]); ``mlp`` for everything else."""
    shape, dtype = tuple(obs_shape), np.dtype(obs_dtype)
    if len(shape) == 3 and dtype == np.uint8 and min(shape[1:]) >= 36:
        return "nature_cnn"
    if len(shape) == 3 and dtype in (np.bool_, np.uint8) and shape[0] == shape[1] and 3 <= shape[0] < 36:
        return "minatar_cnn"
    return "mlp"


def build_q_network(kind: str, obs_shape: Sequence[int], num_actions: int,
                    hidden_sizes: Sequence[int], dueling: bool = False, atoms: int = 1,
                    v_min: float = -10.0, v_max: float = 10.0,
                    encoding: InputEncoding | None = None) -> nn.Module:
    """Build the Q-network named by ``kind`` (``mlp``, ``nature_cnn`` or ``minatar_cnn``), with a
    categorical head of ``atoms`` values in [v_min, v_max] if ``atoms > 1``. ``encoding``: how the
    stored observation rows become the MLP's inputs (None: flattened as they are).

    A shape the kind cannot take is a ValueError naming ``network.kind``."""
    shape = tuple(obs_shape)
    head = (dueling, atoms, v_min, v_max)
    if kind == "mlp":
        width = encoding.width if encoding is not None else int(np.prod(shape))
        return MLPQNetwork(width, num_actions, hidden_sizes, *head, encoding=encoding)
    if encoding is not None:
        raise ValueError(f"network.kind: {kind} takes images; these observations are encoded rows "
                         f"of {encoding.size} values (one-hot indices): use mlp or auto")
    if kind == "nature_cnn":
        if len(shape) != 3 or min(shape[1:]) < 36:
            raise ValueError(f"network.kind: nature_cnn needs stacked frames [C, H, W] with H, W >= 36 "
                             f"(Atari's [4, 84, 84]); the observations are {shape}")
        return NatureCNN(shape, num_actions, hidden_sizes, *head)
    if kind == "minatar_cnn":
        if len(shape) != 3 or shape[0] != shape[1] or shape[0] < 3:
            raise ValueError(f"network.kind: minatar_cnn needs square channels-last boards [H, H, C] "
                             f"(MinAtar's [10, 10, C]); the observations are {shape}")
        return MinAtarCNN(shape, num_actions, hidden_sizes, *head)
    raise ValueError(f"network.kind: unknown kind {kind!r}")
