"""The learners: what every learner does, what a gradient learner adds, and DQNLearner (online
and target networks, the optimizer, the TD update), which is both.

    Learner                      every learner: the one logical learner each topology trains
      step(batch)                  -> StepResult(metrics, priorities): one update
      get_weights() / get_target_weights() / set_weights(weights, target)   dicts of NumPy arrays
      state_dict() / load_state_dict(state)                 online, target, optimizer, counters
      updates, target_version
    GradientLearner(Learner)     a data-parallel replica or a parameter server's learner
      gradient(batch)              -> StepResult, the clipped gradient left in ``flat_grads``
      apply_gradient(grads=None)   the optimizer step with ``grads`` (one flat vector) or with
                                   what ``flat_grads`` holds (averaged in place by all-reduce)
      advance(num_updates)         count updates made elsewhere (model averaging)
      flat_params, flat_grads, get_flat_weights() / set_flat_weights(online, target)

Gradients are clipped where they are computed (per worker), so one worker's ``gradient`` ->
``apply_gradient`` is exactly ``step``. The learner split over ranks (core/tensor_parallel.py,
local/model_parallel.py) is a Learner, not a GradientLearner.

An update whose loss or gradient is NaN or infinite is skipped (parameters and optimizer left
as they were) and counted: ``step`` judges its own loss and gradient; ``apply_gradient()`` the
gradient it is about to apply (after an all-reduce every replica holds the same one, so every
replica skips the same updates). ``learner.max_non_finite_updates`` in a row raise NonFiniteError.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from distdqn.core import fused_mlp
from distdqn.core.finite import NonFiniteStreak, finite
from distdqn.core.losses import categorical_loss, categorical_targets, td_loss, td_targets
from distdqn.core.optim import Adam
from distdqn.core.schedules import LinearSchedule
from distdqn.core.targets import TargetUpdater
from distdqn.core.transitions import Batch

# Batches that arrive through Ray's object store are read-only NumPy views; the learner only reads
# them, so torch's warning about non-writable arrays does not apply.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

if TYPE_CHECKING:
    from distdqn.config import LearnerConfig


@dataclass
class StepResult:
    metrics: dict[str, float]   # loss, q_mean, grad_norm
    priorities: np.ndarray      # per sampled transition, for prioritized replay: |TD error|, or the
                                # cross-entropy of a distributional (C51) network


class Learner(Protocol):
    """What every learner does (DQNLearner; a learner split over ranks, as rank 0 sees it)."""

    @property
    def updates(self) -> int: ...
    @property
    def target_version(self) -> int: ...
    def step(self, batch: Batch) -> StepResult: ...
    def get_weights(self) -> dict[str, np.ndarray]: ...
    def get_target_weights(self) -> dict[str, np.ndarray]: ...
    def set_weights(self, weights: Mapping[str, np.ndarray],
                    target: Mapping[str, np.ndarray] | None = None) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class GradientLearner(Learner, Protocol):
    """What a learner adds for data parallelism: its gradient out, a gradient in, flat vectors."""

    flat_params: torch.Tensor
    flat_grads: torch.Tensor

    def gradient(self, batch: Batch) -> StepResult: ...
    def apply_gradient(self, grads: np.ndarray | None = None) -> None: ...
    def advance(self, num_updates: int) -> None: ...
    def get_flat_weights(self) -> tuple[np.ndarray, np.ndarray]: ...
    def set_flat_weights(self, online: np.ndarray | None, target: np.ndarray | None = None) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device is cuda but no CUDA device is available")
    return torch.device(name)


def flatten_parameters(params: list[nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
    """Move ``params`` into one contiguous buffer and give each a zero ``.grad`` in a second one:
    each parameter and its gradient become views (modules, ``load_state_dict`` and in-place
    updates keep working); returns the two flat buffers."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    grads = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        p.grad = grads[offset:offset + n].view_as(p)
        offset += n
    return flat, grads


class TDUpdate:
    """What every learner computes with: online and target networks whose parameters and gradients
    are views of one flat buffer each, Adam, the target updates, and the TD update itself
    (``step``). DQNLearner adds the weights, state and gradient calls; the learner split over
    ranks (core/tensor_parallel.py) adds its collective ones. ``owns_target``: it updates its own
    target network (False: a server keeps the target network and sends it, as in sync_ps,
    async_ps and federated)."""

    def __init__(self, network: nn.Module, cfg: LearnerConfig, lr_decay_updates: int | None = None,
                 owns_target: bool = True):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.online = network.to(self.device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.params = list(self.online.parameters())
        # one buffer for all parameters and one for their gradients (the fused path, autograd and
        # apply_gradient write into the views): clipping, reducing and the optimizer step are one
        # kernel call on one tensor each, whatever the number of layers
        self.flat_params, self.flat_grads = flatten_parameters(self.params)
        self.optimizer = Adam([self.flat_params], lr=cfg.lr, eps=cfg.adam_eps)
        self._lr_decay_updates = lr_decay_updates
        self.lr_schedule = (LinearSchedule(cfg.lr, cfg.lr_end, lr_decay_updates or 1)
                            if cfg.lr_end is not None else None)
        self.target_updater = TargetUpdater(cfg.target_update, cfg.target_update_period, cfg.tau)
        self.updates = 0
        self.target_version = 0     # ``updates`` when the target network last changed
        self.owns_target = owns_target
        self.non_finite = NonFiniteStreak(cfg.max_non_finite_updates, "learner (its loss or gradient)")   # updates skipped
        use_fused = cfg.kernel == "fused_mlp" or (cfg.kernel == "auto" and fused_mlp.supports(network))
        if cfg.kernel == "fused_mlp" and not fused_mlp.supports(network):
            raise ValueError("learner.kernel fused_mlp needs an MLP network (network.kind: mlp) "
                             "with one value per action (network.atoms: 1)")
        self.distributional = getattr(network, "atoms", 1) > 1
        self._fused = (fused_mlp.FusedMLPUpdate(self.online, self.target, cfg.double_dqn, cfg.loss,
                                                cfg.huber_delta) if use_fused else None)

    # ---- the update ----
    def _tensors(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        dev = self.device
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(dev, non_blocking=True) for a in (
            batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated, batch.discount,
            batch.weights))

    def _gradients(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fill ``.grad`` of the online parameters; return (loss, td_errors, q_mean)."""
        obs, action, reward, next_obs, terminated, discount, weights = self._tensors(batch)
        if self._fused is not None:
            return self._fused(obs, action, reward, next_obs, terminated, discount, weights)
        if self.distributional:
            return self._categorical_gradients(obs, action, reward, next_obs, terminated, discount, weights)
        q_taken = self.online(obs).gather(1, action[:, None]).squeeze(1)
        with torch.no_grad():
            next_q_online = self.online(next_obs) if self.cfg.double_dqn else None
            targets = td_targets(reward, discount, terminated, next_q_online, self.target(next_obs))
        loss, td_errors = td_loss(q_taken, targets, weights, self.cfg.loss, self.cfg.huber_delta)
        self.flat_grads.zero_()
        loss.backward()   # accumulates into the existing .grad views, in place
        return loss.detach(), td_errors, q_taken.detach().mean()

    def _categorical_gradients(self, obs, action, reward, next_obs, terminated, discount, weights):
        """C51's update: the cross-entropy between the projected target distribution and the online
        one, for the taken actions; Double DQN picks a* by the online network's means."""
        rows = torch.arange(obs.shape[0], device=obs.device)
        log_probs = torch.log_softmax(self.online.logits(obs)[rows, action], dim=1)
        support = self.online.support
        with torch.no_grad():
            next_probs = torch.softmax(self.target.logits(next_obs), dim=2)
            next_q = self.online(next_obs) if self.cfg.double_dqn else next_probs @ support
            next_probs = next_probs[rows, next_q.argmax(dim=1)]
            targets = categorical_targets(reward, discount, terminated, next_probs, support)
        loss, cross_entropy = categorical_loss(log_probs, targets, weights)
        self.flat_grads.zero_()
        loss.backward()
        return loss.detach(), cross_entropy, (log_probs.detach().exp() @ support).mean()

    @torch.inference_mode()
    def _grad_norm(self) -> torch.Tensor:
        """The global gradient L2 norm (a learner split over ranks sums over them)."""
        return torch.linalg.vector_norm(self.flat_grads)

    @torch.inference_mode()
    def _clip(self) -> torch.Tensor:
        """Clip the global gradient norm in place (as ``clip_grad_norm_``); return the norm before."""
        total = self._grad_norm()
        if self.cfg.max_grad_norm is not None:
            self.flat_grads.mul_((self.cfg.max_grad_norm / (total + 1e-6)).clamp_(max=1.0))
        return total

    def _optimizer_step(self) -> None:
        if self.lr_schedule is not None:
            self.optimizer.lr = self.lr_schedule(self.updates)
        self.optimizer.step([self.flat_grads])
        self.updates += 1
        if self.owns_target and self.target_updater.after_update(self.updates, self.target, self.online):
            self.target_version = self.updates

    def _clipped_gradient(self, batch: Batch) -> StepResult:
        loss, td_errors, q_mean = self._gradients(batch)
        grad_norm = self._clip()
        return self._result(loss, td_errors, q_mean, grad_norm)

    def step(self, batch: Batch) -> StepResult:
        """One learner update on ``batch``; returns metrics and the new priorities."""
        result = self._clipped_gradient(batch)
        if not self.non_finite.check(finite([result.metrics["loss"], result.metrics["grad_norm"]])):
            return StepResult({"non_finite_update_share": 1.0}, result.priorities)   # nothing changed
        self._optimizer_step()
        return result

    @staticmethod
    def _result(loss, td_errors, q_mean, grad_norm) -> StepResult:
        metrics = torch.stack([loss, q_mean, grad_norm]).cpu().tolist()
        return StepResult({"loss": metrics[0], "q_mean": metrics[1], "grad_norm": metrics[2]},
                          td_errors.abs().cpu().numpy())


class DQNLearner(TDUpdate):
    """The learner of one process: a GradientLearner."""

    def __deepcopy__(self, memo: dict) -> DQNLearner:
        """A new learner with this one's state (copying the attributes one by one would give the
        copy parameters that are no longer views of its flat buffers)."""
        clone = DQNLearner(copy.deepcopy(self.online, memo), self.cfg, self._lr_decay_updates, self.owns_target)
        clone.load_state_dict(self.state_dict())
        return clone

    def gradient(self, batch: Batch) -> StepResult:
        """The clipped gradient on ``batch``, left in ``flat_grads`` (parameters unchanged)."""
        return self._clipped_gradient(batch)

    def apply_gradient(self, grads: np.ndarray | None = None) -> None:
        """One optimizer step with ``grads`` (one flat vector in the layout of ``flat_grads``: a
        mean over workers, or one worker's), or with what ``flat_grads`` holds now (None: the
        clipped gradient ``gradient`` left there, averaged in place by an all-reduce)."""
        if grads is not None:
            self.flat_grads.copy_(torch.from_numpy(grads))
        elif not self.non_finite.check(finite(self.flat_grads)):   # skipped on every replica alike
            return
        self._optimizer_step()

    def advance(self, num_updates: int) -> None:
        """Count ``num_updates`` updates that were made elsewhere (model averaging: the online weights
        were just set to an average of workers' models), with the target updates they would have
        made: a hard copy if a multiple of the period was crossed, or tau applied ``num_updates`` times."""
        before, self.updates = self.updates, self.updates + num_updates
        if self.target_updater.after_updates(before, self.updates, self.target, self.online):
            self.target_version = self.updates

    # ---- weights and state ----
    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.online.state_dict().items()}

    def get_target_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.target.state_dict().items()}

    def set_weights(self, weights: Mapping[str, np.ndarray],
                    target: Mapping[str, np.ndarray] | None = None) -> None:
        """Set the online weights (and the target network's, if given)."""
        with torch.no_grad():
            for k, v in self.online.state_dict().items():
                v.copy_(torch.as_tensor(weights[k]))
            if target is not None:
                for k, v in self.target.state_dict().items():
                    v.copy_(torch.as_tensor(target[k]))

    def get_flat_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """The online and target parameters, each as one flat vector (the layout of ``flat_params``)."""
        with torch.no_grad():
            return (self.flat_params.detach().cpu().numpy().copy(),
                    torch.nn.utils.parameters_to_vector(self.target.parameters()).cpu().numpy())

    def set_flat_weights(self, online: np.ndarray | None, target: np.ndarray | None = None) -> None:
        """``set_weights`` from flat vectors (``get_flat_weights``' layout); None leaves that network."""
        with torch.no_grad():
            if online is not None:
                self.flat_params.copy_(torch.from_numpy(online))
            if target is not None:   # copied into the parameters (vector_to_parameters would rebind them)
                vector, offset = torch.from_numpy(target), 0
                for p in self.target.parameters():
                    p.copy_(vector[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies, not the live tensors)."""
        return copy.deepcopy({"online": self.online.state_dict(), "target": self.target.state_dict(),
                              "optimizer": self.optimizer.state_dict(), "updates": self.updates,
                              "target_version": self.target_version})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self.target_version = int(state["target_version"])
