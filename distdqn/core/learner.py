"""DQNLearner: online and target networks, the optimizer, and the TD update.

    step(batch)          -> StepResult(metrics, priorities)     one update (single, Ape-X)
    step(batch, reduce_grads)                                     the same, with the clipped gradient
                                                                  averaged across replicas first (all-reduce)
    compute_grads(batch) -> (grads, StepResult)                   gradient only (parameter servers):
    apply_grads(grads)                                            the optimizer step with a given gradient
    gradient(batch) / apply_flat_grads(vector)                    the same pair on flat vectors (the
                                                                  shared-memory server channel)
    advance(num_updates)                                          count updates made elsewhere (model averaging)
    get_weights() / set_weights(weights, target)                  dict of NumPy arrays, for broadcast
    get_flat_weights() / set_flat_weights(online, target)         the same as two flat vectors
    state_dict() / load_state_dict(state)                         online, target, optimizer, counter

Gradients are clipped where they are computed (per worker), so one worker's ``compute_grads`` ->
``apply_grads`` is exactly ``step``. ``step`` skips an update whose loss or gradient is NaN or
infinite (the parameters and optimizer untouched; with ``reduce_grads``, judged on the reduced
gradient, so every replica skips the same updates) and counts it; ``learner.max_non_finite_updates``
in a row raise NonFiniteError.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


class DQNLearner:
    def __init__(self, network: nn.Module, cfg: LearnerConfig, lr_decay_updates: int | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.online = network.to(self.device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.params = list(self.online.parameters())
        # one buffer for all parameters and one for their gradients (the fused path, autograd and
        # apply_grads write into the views): clipping, reducing and the optimizer step are one
        # kernel call on one tensor each, whatever the number of layers
        self.flat_params, self.flat_grads = flatten_parameters(self.params)
        self.optimizer = Adam([self.flat_params], lr=cfg.lr, eps=cfg.adam_eps)
        self._lr_decay_updates = lr_decay_updates
        self.lr_schedule = (LinearSchedule(cfg.lr, cfg.lr_end, lr_decay_updates or 1)
                            if cfg.lr_end is not None else None)
        self.target_updater = TargetUpdater(cfg.target_update, cfg.target_update_period, cfg.tau)
        self.updates = 0
        self.target_version = 0     # ``updates`` when the target network last changed
        self.owns_target = True     # False: a server keeps the target network and sends it here
        self.non_finite = NonFiniteStreak(cfg.max_non_finite_updates, "learner")   # updates skipped
        use_fused = cfg.kernel == "fused_mlp" or (cfg.kernel == "auto" and fused_mlp.supports(network))
        if cfg.kernel == "fused_mlp" and not fused_mlp.supports(network):
            raise ValueError("learner.kernel fused_mlp needs an MLP network (network.kind: mlp) "
                             "with one value per action (network.atoms: 1)")
        self.distributional = getattr(network, "atoms", 1) > 1
        self._fused = (fused_mlp.FusedMLPUpdate(self.online, self.target, cfg.double_dqn, cfg.loss,
                                                cfg.huber_delta) if use_fused else None)

    def __deepcopy__(self, memo: dict) -> DQNLearner:
        """A new learner with this one's state (copying the attributes one by one would give the
        copy parameters that are no longer views of its flat buffers)."""
        clone = DQNLearner(copy.deepcopy(self.online, memo), self.cfg, self._lr_decay_updates)
        clone.load_state_dict(self.state_dict())
        clone.owns_target = self.owns_target
        return clone

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

    def step(self, batch: Batch, reduce_grads: Callable[[list[torch.Tensor]], None] | None = None) -> StepResult:
        """One learner update on ``batch``; returns metrics and the new priorities. ``reduce_grads``,
        if given, replaces the clipped gradient in place before the optimizer step (all-reduce
        averages it across replicas); it gets the flat gradient, ``[flat_grads]``, whose parameters
        are ``[flat_params]``."""
        loss, td_errors, q_mean = self._gradients(batch)
        grad_norm = self._clip()
        if reduce_grads is not None:
            reduce_grads([self.flat_grads])
        result = self._result(loss, td_errors, q_mean, grad_norm)
        m = result.metrics
        ok = finite(self.flat_grads) if reduce_grads is not None else finite([m["loss"], m["grad_norm"]])
        if not self.non_finite.check(ok):   # skipped: nothing changes; its priorities are not finite either
            return StepResult({"non_finite_update_share": 1.0}, result.priorities)
        self._optimizer_step()
        return result

    def gradient(self, batch: Batch) -> StepResult:
        """The clipped gradient on ``batch``, left in ``flat_grads`` (parameters unchanged)."""
        loss, td_errors, q_mean = self._gradients(batch)
        grad_norm = self._clip()
        return self._result(loss, td_errors, q_mean, grad_norm)

    def compute_grads(self, batch: Batch) -> tuple[dict[str, np.ndarray], StepResult]:
        """The clipped gradient on ``batch`` as NumPy arrays (parameters unchanged)."""
        result = self.gradient(batch)
        return self.grads(), result

    def grads(self) -> dict[str, np.ndarray]:
        """The gradient now in ``flat_grads``, per parameter (copies)."""
        return {name: p.grad.detach().cpu().numpy().copy() for name, p in self.online.named_parameters()}

    def apply_grads(self, grads: Mapping[str, np.ndarray]) -> None:
        """One optimizer step with the given gradient (for example a mean over workers)."""
        with torch.no_grad():
            for name, p in self.online.named_parameters():
                p.grad.copy_(torch.as_tensor(grads[name]))
        self._optimizer_step()

    def apply_flat_grads(self, grads: np.ndarray) -> None:
        """``apply_grads`` with the gradient as one flat vector (the layout of ``flat_grads``)."""
        self.flat_grads.copy_(torch.from_numpy(grads))
        self._optimizer_step()

    def advance(self, num_updates: int) -> None:
        """Count ``num_updates`` updates that were made elsewhere (model averaging: the online weights
        were just set to an average of workers' models), with the target updates they would have
        made: a hard copy if a multiple of the period was crossed, or tau applied ``num_updates`` times."""
        before, self.updates = self.updates, self.updates + num_updates
        if self.target_updater.after_updates(before, self.updates, self.target, self.online):
            self.target_version = self.updates

    @staticmethod
    def _result(loss, td_errors, q_mean, grad_norm) -> StepResult:
        metrics = torch.stack([loss, q_mean, grad_norm]).cpu().tolist()
        return StepResult({"loss": metrics[0], "q_mean": metrics[1], "grad_norm": metrics[2]},
                          td_errors.abs().cpu().numpy())

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
