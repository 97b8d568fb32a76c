"""Adam on a fixed list of parameters, one fused kernel call per step.

The arithmetic is ``torch.optim.Adam``'s (the same fused kernel, ``torch._fused_adam_``, on CPU and
CUDA; a ``torch._foreach_*`` version of the same formula elsewhere), without its per-step Python
bookkeeping, which for DQN-sized networks costs more than the kernel itself, and without its
constructor, which imports torch's compiler stack (over a second, paid by every short run).
``tests/test_optim.py`` checks it against ``torch.optim.Adam`` step for step.
"""

from __future__ import annotations

from typing import Any

import torch


class Adam:
    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # one step counter per parameter, float32 on the parameter's device, as the fused kernel wants
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
        self.fused = hasattr(torch, "_fused_adam_") and all(p.device.type in ("cpu", "cuda") for p in self.params)

    @torch.inference_mode()
    def step(self, grads: list[torch.Tensor]) -> None:
        """theta <- theta - lr * m_hat / (sqrt(v_hat) + eps), with bias-corrected moments."""
        torch._foreach_add_(self.steps, 1)
        beta1, beta2 = self.betas
        if self.fused:
            torch._fused_adam_(self.params, grads, self.exp_avg, self.exp_avg_sq, [], self.steps,
                               amsgrad=False, lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=0.0,
                               eps=self.eps, maximize=False)
            return
        step = float(self.steps[0])
        torch._foreach_lerp_(self.exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(self.exp_avg_sq, beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1 - beta2)
        bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bias2 ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.exp_avg, denom, -self.lr / bias1)

    def state_dict(self) -> dict[str, Any]:
        return {"exp_avg": [t.clone() for t in self.exp_avg], "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
                "steps": [t.clone() for t in self.steps], "lr": self.lr, "betas": self.betas, "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("exp_avg", "exp_avg_sq", "steps"):
            mine, theirs = getattr(self, key), state[key]
            if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
                raise ValueError(f"optimizer state {key} does not match the parameters")
            for a, b in zip(mine, theirs):
                a.copy_(b)
