"""SGD and Adam over stacked tensors through PyTorch's fused kernels, with the learning rate as a tensor.

They are torch.optim.SGD (momentum, L2 weight decay, no dampening) and torch.optim.Adam (L2 weight
decay, bias correction) with `fused=True`: one pass over parameters, gradients and state per step,
which matters once K stacked replicates no longer fit in the CPU's caches. The learning rate and
Adam's step count live on the parameters' device, so a CUDA graph can capture the whole step and the
schedule can change the rate between replays.
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

    def state_dict(self) -> dict[str, Tensors]:
        return {name: [t.clone() for t in getattr(self, name)] for name in self.state_names}

    def load_state_dict(self, state: dict[str, Tensors]) -> None:
        for name, tensors in state.items():
            for mine, saved in zip(getattr(self, name), tensors, strict=True):
                mine.copy_(saved)

    state_names: tuple[str, ...] = ()


class SGD(StackedOptimizer):
    state_names = ("buffers",)

    def __init__(self, params: Tensors, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        self.buffers = [torch.zeros_like(p) for p in params] if momentum else []

    @torch.no_grad()
    def step(self, grads: Tensors) -> None:
        # zero-initialized buffers make the first step buf = grad, as torch.optim does
        torch._fused_sgd_(self.params, grads, self.buffers, weight_decay=self.weight_decay, momentum=self.momentum,
                          lr=self.lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=False)


class Adam(StackedOptimizer):
    state_names = ("exp_avg", "exp_avg_sq", "steps")

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
        self.steps[0].add_(1)
        torch._fused_adam_(self.params, grads, self.exp_avg, self.exp_avg_sq, [], self.steps * len(self.params),
                           lr=self.lr, beta1=self.beta1, beta2=self.beta2, weight_decay=self.weight_decay,
                           eps=self.eps, amsgrad=False, maximize=False)


def build_optimizer(name: str, params: Tensors, lr: float, momentum: float, weight_decay: float) -> StackedOptimizer:
    if name == "sgd":
        return SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
    return Adam(params, lr, weight_decay=weight_decay)
