"""SGD and Adam over stacked tensors, in a few foreach calls, with the learning rate as a tensor.

They follow torch.optim.SGD (momentum, L2 weight decay, no dampening) and torch.optim.Adam (L2 weight
decay, bias correction) step for step. Keeping the learning rate and Adam's step count on the device
lets a CUDA graph capture the whole training step and the schedule change it between replays.
"""

from __future__ import annotations

import torch

Tensors = list[torch.Tensor]


class StackedOptimizer:
    def __init__(self, params: Tensors, lr: float, weight_decay: float) -> None:
        self.params = params
        self.weight_decay = weight_decay
        self.lr = torch.tensor(lr, dtype=torch.float32, device=params[0].device)

    def set_lr(self, value: float) -> None:
        self.lr.fill_(value)

    def _decayed(self, grads: Tensors) -> Tensors:
        if self.weight_decay == 0:
            return grads
        return torch._foreach_add(grads, self.params, alpha=self.weight_decay)

    def state_dict(self) -> dict[str, Tensors]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Tensors]) -> None:
        for name, tensors in state.items():
            for mine, saved in zip(getattr(self, name), tensors, strict=True):
                mine.copy_(saved)


class SGD(StackedOptimizer):
    def __init__(self, params: Tensors, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        self.buffers = [torch.zeros_like(p) for p in params] if momentum else []

    @torch.no_grad()
    def step(self, grads: Tensors) -> None:
        grads = self._decayed(grads)
        if self.momentum:
            torch._foreach_mul_(self.buffers, self.momentum)
            torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        torch._foreach_add_(self.params, torch._foreach_mul(grads, -self.lr))

    def state_dict(self) -> dict[str, Tensors]:
        return {"buffers": [b.clone() for b in self.buffers]}


class Adam(StackedOptimizer):
    def __init__(self, params: Tensors, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=params[0].device)]

    @torch.no_grad()
    def step(self, grads: Tensors) -> None:
        grads = self._decayed(grads)
        step = self.steps[0]
        step.add_(1)
        torch._foreach_lerp_(self.exp_avg, grads, 1 - self.beta1)
        torch._foreach_mul_(self.exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1 - self.beta2)
        step_size = self.lr / (1 - self.beta1 ** step)
        bias_correction2_sqrt = (1 - self.beta2 ** step).sqrt()
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        updates = torch._foreach_div(self.exp_avg, denom)
        torch._foreach_mul_(updates, -step_size)
        torch._foreach_add_(self.params, updates)

    def state_dict(self) -> dict[str, Tensors]:
        return {"exp_avg": [t.clone() for t in self.exp_avg], "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
                "steps": [self.steps[0].clone()]}


def build_optimizer(name: str, params: Tensors, lr: float, momentum: float, weight_decay: float) -> StackedOptimizer:
    if name == "sgd":
        return SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
    return Adam(params, lr, weight_decay=weight_decay)
