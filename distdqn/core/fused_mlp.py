"""The DQN update of a ReLU MLP with its backward pass written out: the same math as autograd.

For the small networks DQN uses on vector observations, a plain PyTorch update spends most of its
time outside arithmetic: module calls, building and walking the autograd graph, and many tiny
kernels. This computes the TD loss gradient with a handful of matrix products into preallocated
``.grad`` tensors, so the learner's optimizer step, clipping and target update stay the same code
for both paths. ``tests/test_learner.py`` checks it against autograd, update for update.

Notation: x_0 = obs, z_i = x_{i-1} W_i^T + b_i, x_i = relu(z_i), q = head(x_L).
"""

from __future__ import annotations

import torch

from distdqn.core.networks import MLPQNetwork


def supports(network: torch.nn.Module) -> bool:
    """An MLP with one value per action (a categorical head, ``atoms > 1``, is autograd's)."""
    return type(network) is MLPQNetwork and network.atoms == 1


class FusedMLPUpdate:
    """Computes loss, TD errors and parameter gradients of the DQN loss for an ``MLPQNetwork``.

    The parameter tensors are looked up once: the learner updates them in place (the optimizer,
    ``load_state_dict`` and ``set_weights`` all copy into them), so the references stay valid.
    """

    def __init__(self, online: MLPQNetwork, target: MLPQNetwork, double_dqn: bool, loss: str,
                 huber_delta: float):
        if not (supports(online) and supports(target)):
            raise TypeError("FusedMLPUpdate needs MLPQNetwork online and target networks")
        self.double_dqn, self.loss, self.huber_delta = double_dqn, loss, huber_delta
        self._encode = online.encode   # flattened, or one-hot encoded: no parameters, nothing to differentiate
        self.dueling = online.dueling
        for p in online.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._online_hidden = [(layer.weight, layer.bias) for layer in online.hidden]
        self._online_head = self._head_params(online)
        # for the forward products: (W^T, b) as views made once (a transpose per call costs about
        # as much as a small kernel); the parameters are updated in place, so the views stay current
        self._online_forward = self._transposed(self._online_hidden, self._online_head)
        self._target_forward = self._transposed([(layer.weight, layer.bias) for layer in target.hidden],
                                                self._head_params(target))

    @staticmethod
    def _head_params(net: MLPQNetwork) -> tuple[torch.Tensor, ...]:
        head = net.head
        if net.dueling:
            return head.value.weight, head.value.bias, head.advantage.weight, head.advantage.bias
        return head.weight, head.bias

    @staticmethod
    def _transposed(hidden, head) -> tuple[list, tuple]:
        return ([(weight.detach().t(), bias) for weight, bias in hidden],
                tuple(t.detach().t() if t.dim() == 2 else t for t in head))

    def _forward(self, params: tuple[list, tuple], x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        hidden, head = params
        for weight_t, bias in hidden:
            x = torch.addmm(bias, x, weight_t).relu_()
            if keep is not None:
                keep.append(x)
        if self.dueling:
            value_wt, value_b, adv_wt, adv_b = head
            advantage = torch.addmm(adv_b, x, adv_wt)
            return advantage.sub_(advantage.mean(1, keepdim=True)).add_(torch.addmm(value_b, x, value_wt))
        return torch.addmm(head[1], x, head[0])

    @torch.inference_mode()
    def __call__(self, obs, action, reward, next_obs, terminated, discount, weights):
        """Fill the online network's ``.grad``; return (loss, td_errors, mean Q of taken actions)."""
        batch = obs.shape[0]
        obs = self._encode(obs)
        next_obs = self._encode(next_obs)
        action = action[:, None]

        # forward: the online net on s and s' in one pass (keeping activations), the target on s'
        both = torch.cat([obs, next_obs]) if self.double_dqn else obs
        activations = [both]
        q_both = self._forward(self._online_forward, both, activations)
        q = q_both[:batch]
        next_q_target = self._forward(self._target_forward, next_obs)
        next_q_select = q_both[batch:] if self.double_dqn else next_q_target
        next_value = next_q_target.gather(1, next_q_select.argmax(1, keepdim=True)).squeeze(1)
        targets = torch.addcmul(reward, discount.masked_fill(terminated, 0.0), next_value)
        q_taken = q.gather(1, action).squeeze(1)
        td = q_taken - targets

        # loss and dL/dq_taken for the importance-weighted mean
        if self.loss == "huber":
            elementwise = torch.nn.functional.huber_loss(q_taken, targets, reduction="none",
                                                         delta=self.huber_delta)
            d_td = td.clamp(-self.huber_delta, self.huber_delta)
        else:
            elementwise = 0.5 * td.square()
            d_td = td
        loss = torch.dot(weights, elementwise) / batch
        grad_q = torch.zeros_like(q).scatter_(1, action, (weights * d_td).div_(batch)[:, None])

        # backward through the head (only the first `batch` rows carry gradient)
        x_last = activations[-1][:batch]
        if self.dueling:
            value_w, value_b, adv_w, adv_b = self._online_head
            grad_value = grad_q.sum(1, keepdim=True)
            grad_adv = grad_q - grad_q.mean(1, keepdim=True)
            torch.mm(grad_value.t(), x_last, out=value_w.grad)
            torch.sum(grad_value, 0, out=value_b.grad)
            torch.mm(grad_adv.t(), x_last, out=adv_w.grad)
            torch.sum(grad_adv, 0, out=adv_b.grad)
            grad_x = torch.addmm(grad_value @ value_w, grad_adv, adv_w)
        else:
            head_w, head_b = self._online_head
            torch.mm(grad_q.t(), x_last, out=head_w.grad)
            torch.sum(grad_q, 0, out=head_b.grad)
            grad_x = grad_q @ head_w

        # backward through the hidden layers: dz_i = dx_i * [x_i > 0]
        for i in range(len(self._online_hidden) - 1, -1, -1):
            weight, bias = self._online_hidden[i]
            grad_z = torch.ops.aten.threshold_backward(grad_x, activations[i + 1][:batch], 0.0)
            torch.mm(grad_z.t(), activations[i][:batch], out=weight.grad)
            torch.sum(grad_z, 0, out=bias.grad)
            if i > 0:
                grad_x = grad_z @ weight
        return loss, td, q_taken.mean()
