"""Tensor parallelism (Megatron-LM style, Shoeybi et al. 2019): a Q-network's linear layers split
across P ranks, and the learner of one rank.

Linear layers are taken in pairs in the order they run (the MLP's hidden layers, then the head;
for the Nature CNN, its fully connected part; the convolutional torso is replicated):

    x (every rank) --ColumnParallel: W1[rank's rows]--> h_r = relu(x W1_r^T + b1_r)   (no exchange)
                   --RowParallel:    W2[:, rank's cols]--> y = all_reduce_sum(h_r W2_r^T) + b2

so a pair costs one all-reduce of its output forward, and (when its input needs a gradient: a
torso, or an earlier pair) one of the input's gradient backward. A layer left without a partner
(an odd count: the head after an even number of hidden layers) is replicated. Every rank then
holds the same Q-values, computes the same loss, TD errors and priorities, and the same gradient
of each replicated parameter, so those stay equal on every rank without exchange.

A rank's parameters are plain tensors (its shards), so ``DQNLearner``'s one flat buffer, its fused
Adam and target updates work unchanged on them; only the gradient norm (summed over ranks) and the
full state (gathered to rank 0, scattered from it) need collectives. PyTorch's own
``torch.distributed.tensor.parallel`` gives DTensor parameters, which neither fit one flat buffer
nor run through the fused Adam, and cost several times a small network's update in dispatch
(docs/model_parallel.md).

Every method of ``ShardedLearner`` is collective: all ranks call it, in the same order. The
process group is made elsewhere (local/model_parallel.py) and handed in as a ``Collective``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distdqn.core.learner import TDUpdate
from distdqn.core.networks import DuelingHead, MLPQNetwork, NatureCNN

if TYPE_CHECKING:
    from distdqn.config import LearnerConfig


class Collective:
    """The ranks' process group as the layers use it; counts the time spent in all-reduces."""

    def __init__(self, group: Any, rank: int, world_size: int, device: torch.device | None = None):
        self.group, self.rank, self.world_size = group, rank, world_size
        self.device = device or torch.device("cpu")
        self.all_reduce_s = 0.0   # wall time in all-reduces (waiting for the slowest rank included)

    def __deepcopy__(self, memo: dict) -> Collective:
        return self   # a copied network (the target) shares its ranks' group

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        dist.all_reduce(tensor, group=self.group)
        self.all_reduce_s += time.perf_counter() - start
        return tensor


class _SumForward(torch.autograd.Function):
    """Forward: sum over ranks (in place); backward: identity (each rank's part got all of it)."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor, comm: Collective) -> torch.Tensor:
        ctx.mark_dirty(partial)
        return comm.all_reduce_(partial)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _SumBackward(torch.autograd.Function):
    """Forward: identity; backward: sum over ranks (each rank's shard gives part of the input's gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Collective) -> torch.Tensor:
        ctx.comm = comm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.comm.all_reduce_(grad.contiguous().clone()), None


class ColumnParallelLinear(nn.Module):
    """This rank's rows of a linear layer's weight and bias: its slice of the output features."""

    split_dims: ClassVar[dict[str, int | None]] = {"weight": 0, "bias": 0}

    def __init__(self, full: nn.Linear, comm: Collective):
        super().__init__()
        self.comm = comm
        self.weight = nn.Parameter(full.weight.detach().chunk(comm.world_size, 0)[comm.rank].clone())
        self.bias = nn.Parameter(full.bias.detach().chunk(comm.world_size, 0)[comm.rank].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x = _SumBackward.apply(x, self.comm)
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """This rank's columns of a linear layer's weight (its slice of the input features); the bias
    is replicated and added once, after the sum over ranks."""

    split_dims: ClassVar[dict[str, int | None]] = {"weight": 1, "bias": None}

    def __init__(self, full: nn.Linear, comm: Collective):
        super().__init__()
        self.comm = comm
        self.weight = nn.Parameter(full.weight.detach().chunk(comm.world_size, 1)[comm.rank].clone())
        self.bias = nn.Parameter(full.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SumForward.apply(F.linear(x, self.weight), self.comm) + self.bias


def _mlp_of(network: nn.Module) -> MLPQNetwork:
    if isinstance(network, MLPQNetwork):
        return network
    if isinstance(network, NatureCNN):
        return network.mlp
    raise TypeError(f"tensor parallelism splits MLPQNetwork and NatureCNN, not {type(network).__name__}")


def split_q_network(network: nn.Module, comm: Collective) -> nn.Module:
    """Replace, in place, the linear layers of ``network``'s fully connected part by this rank's
    shards: pairs in order, column- then row-split; a last unpaired layer stays whole."""
    mlp = _mlp_of(network)
    for i, layer in enumerate(mlp.hidden):   # column, row, column, ...
        mlp.hidden[i] = (ColumnParallelLinear if i % 2 == 0 else RowParallelLinear)(layer, comm)
    if len(mlp.hidden) % 2:   # the head closes the last pair (a dueling head's two layers side by side)
        if isinstance(mlp.head, DuelingHead):
            mlp.head.value = RowParallelLinear(mlp.head.value, comm)
            mlp.head.advantage = RowParallelLinear(mlp.head.advantage, comm)
        else:
            mlp.head = RowParallelLinear(mlp.head, comm)
    return network


def split_dims(network: nn.Module) -> dict[str, int | None]:
    """For each state-dict key of a split network, the dimension its full tensor is split along
    (None: replicated)."""
    dims = {}
    for prefix, module in network.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            key = f"{prefix}.{name}" if prefix else name
            dims[key] = module.split_dims[name] if hasattr(module, "split_dims") else None
    return dims


class ShardLayout:
    """Where each rank's part of every parameter lies in the full tensor, and in the flat buffers
    (rank-local and full) that hold all parameters in the network's order."""

    def __init__(self, full_shapes: Mapping[str, torch.Size], dims: Mapping[str, int | None], world_size: int):
        self.keys = list(full_shapes)
        self.full_shapes = {k: torch.Size(s) for k, s in full_shapes.items()}
        self.dims, self.world_size = dict(dims), world_size
        self.local_shapes = {}
        for k, shape in self.full_shapes.items():
            d = self.dims[k]
            if d is not None and shape[d] % world_size:
                raise ValueError(f"{k}: {shape[d]} features do not split evenly over {world_size} ranks")
            self.local_shapes[k] = (shape if d is None else
                                    torch.Size(n // world_size if i == d else n for i, n in enumerate(shape)))

    def shard(self, key: str, full: torch.Tensor, rank: int) -> torch.Tensor:
        d = self.dims[key]
        return full if d is None else full.chunk(self.world_size, d)[rank]

    def join(self, key: str, shards: list[torch.Tensor]) -> torch.Tensor:
        d = self.dims[key]
        return shards[0] if d is None else torch.cat(shards, d)

    # ---- flat buffers: every parameter in key order, flattened and concatenated ----
    def unflatten(self, flat: torch.Tensor, full: bool) -> dict[str, torch.Tensor]:
        shapes = self.full_shapes if full else self.local_shapes
        out, offset = {}, 0
        for k in self.keys:
            n = shapes[k].numel()
            out[k] = flat[offset:offset + n].view(shapes[k])
            offset += n
        return out

    def local_flat(self, full_flat: torch.Tensor, rank: int) -> torch.Tensor:
        """Rank ``rank``'s flat buffer, cut from the full flat buffer."""
        full = self.unflatten(full_flat, full=True)
        return torch.cat([self.shard(k, full[k], rank).reshape(-1) for k in self.keys])

    def full_flat(self, local_flats: list[torch.Tensor]) -> torch.Tensor:
        """The full flat buffer, joined from every rank's."""
        parts = [self.unflatten(flat, full=False) for flat in local_flats]
        return torch.cat([self.join(k, [p[k] for p in parts]).reshape(-1) for k in self.keys])


class ShardedLearner(TDUpdate):
    """One rank's part of a DQNLearner split over ``comm.world_size`` ranks: its shards of the online
    and target networks, their gradients and Adam moments. ``network`` is the full network (it is
    split in place). ``step`` is collective, and so are the calls of the full (unsplit) state:
    ``gather_*`` return it on rank 0 only (None elsewhere), ``scatter_*`` take it on rank 0 only.
    To the rest of the system the ranks are one Learner (local/model_parallel.py)."""

    def __init__(self, network: nn.Module, cfg: LearnerConfig, comm: Collective,
                 lr_decay_updates: int | None = None):
        self.comm = comm
        full_shapes = {k: v.shape for k, v in network.state_dict().items()}
        if len(full_shapes) != len(list(network.parameters())):
            raise TypeError("tensor parallelism needs a network whose state is its parameters (no buffers)")
        split_q_network(network, comm)
        self.layout = ShardLayout(full_shapes, split_dims(network), comm.world_size)
        # the hand-derived MLP kernel knows nothing of shards: plain autograd through the split layers
        super().__init__(network, cfg.model_copy(update={"kernel": "autograd"}), lr_decay_updates)
        self._replicated_grads = [p.grad for k, p in self.online.named_parameters() if self.layout.dims[k] is None]

    @torch.inference_mode()
    def _grad_norm(self) -> torch.Tensor:
        """The full gradient's L2 norm: shards' squares summed over ranks, replicated ones counted once."""
        local = torch.linalg.vector_norm(self.flat_grads).square()
        if self._replicated_grads:
            replicated = torch.stack([g.square().sum() for g in self._replicated_grads]).sum()
            local = local - replicated * (1.0 - 1.0 / self.comm.world_size)
        return self.comm.all_reduce_(local.reshape(1)).sqrt().reshape(())

    # ---- the full (unsplit) state: gathered to rank 0, scattered from it ----
    def _gather(self, local_flat: torch.Tensor) -> torch.Tensor | None:
        local_flat = local_flat.detach().contiguous()
        parts = [torch.empty_like(local_flat) for _ in range(self.comm.world_size)] if self.comm.rank == 0 else None
        dist.gather(local_flat, parts, dst=0, group=self.comm.group)
        return self.layout.full_flat(parts) if self.comm.rank == 0 else None

    def _scatter(self, full_flat: torch.Tensor | None, into: torch.Tensor) -> None:
        """Rank r's part of rank 0's ``full_flat`` copied into ``into`` (r's flat buffer)."""
        parts = None
        if self.comm.rank == 0:
            full_flat = full_flat.to(into.device, into.dtype)
            parts = [self.layout.local_flat(full_flat, r).contiguous() for r in range(self.comm.world_size)]
        received = torch.empty_like(into)
        dist.scatter(received, parts, src=0, group=self.comm.group)
        with torch.no_grad():
            into.copy_(received)

    def _target_flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.target.parameters()])

    def _set_target_flat(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            for p, v in zip(self.target.parameters(), self.layout.unflatten(flat, full=False).values()):
                p.copy_(v)

    def _flat_of(self, weights: Mapping[str, Any]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(np.asarray(weights[k])).reshape(-1) for k in self.layout.keys])

    def _as_state_dict(self, full_flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.layout.unflatten(full_flat, full=True).items()}

    def gather_weights(self) -> dict[str, np.ndarray] | None:
        full = self._gather(self.flat_params)
        return None if full is None else {k: v.cpu().numpy() for k, v in self._as_state_dict(full).items()}

    def gather_target_weights(self) -> dict[str, np.ndarray] | None:
        full = self._gather(self._target_flat())
        return None if full is None else {k: v.cpu().numpy() for k, v in self._as_state_dict(full).items()}

    def scatter_weights(self, weights: Mapping[str, np.ndarray] | None,
                    target: Mapping[str, np.ndarray] | None = None, with_target: bool = False) -> None:
        """Rank 0 passes the weights (``with_target`` on every rank says whether a target comes too)."""
        self._scatter(self._flat_of(weights) if weights is not None else None, self.flat_params)
        if with_target:
            received = torch.empty_like(self._target_flat())
            self._scatter(self._flat_of(target) if target is not None else None, received)
            self._set_target_flat(received)

    def gather_state(self) -> dict[str, Any] | None:
        """The state of the unsplit learner, as ``DQNLearner.state_dict`` gives it (rank 0)."""
        online = self._gather(self.flat_params)
        target = self._gather(self._target_flat())
        exp_avg = self._gather(self.optimizer.exp_avg[0])
        exp_avg_sq = self._gather(self.optimizer.exp_avg_sq[0])
        if self.comm.rank != 0:
            return None
        opt = self.optimizer
        return {"online": self._as_state_dict(online), "target": self._as_state_dict(target),
                "optimizer": {"exp_avg": [exp_avg], "exp_avg_sq": [exp_avg_sq],
                              "steps": [t.clone() for t in opt.steps], "lr": opt.lr, "betas": opt.betas,
                              "eps": opt.eps},
                "updates": self.updates, "target_version": self.target_version}

    def scatter_state(self, state: Mapping[str, Any] | None) -> None:
        """Load an unsplit learner's state (rank 0 passes it; the others None)."""
        lead = self.comm.rank == 0
        if lead:
            opt = state["optimizer"]
            for key in ("exp_avg", "exp_avg_sq"):
                if len(opt[key]) != 1 or opt[key][0].numel() != sum(s.numel() for s in self.layout.full_shapes.values()):
                    raise ValueError(f"optimizer state {key} does not match the parameters")
        self._scatter(self._flat_of(state["online"]) if lead else None, self.flat_params)
        received = torch.empty_like(self._target_flat())
        self._scatter(self._flat_of(state["target"]) if lead else None, received)
        self._set_target_flat(received)
        self._scatter(state["optimizer"]["exp_avg"][0] if lead else None, self.optimizer.exp_avg[0])
        self._scatter(state["optimizer"]["exp_avg_sq"][0] if lead else None, self.optimizer.exp_avg_sq[0])
        counters = torch.tensor([float(state["updates"]), float(state["target_version"]),
                                 float(state["optimizer"]["steps"][0])] if lead else [0.0, 0.0, 0.0],
                                dtype=torch.float64, device=self.comm.device)
        dist.broadcast(counters, src=0, group=self.comm.group)
        self.updates, self.target_version = int(counters[0]), int(counters[1])
        with torch.no_grad():
            for t in self.optimizer.steps:
                t.fill_(float(counters[2]))
