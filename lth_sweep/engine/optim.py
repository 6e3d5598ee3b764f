"""SGD and Adam over stacked tensors, with the learning rate as a tensor on the parameters' device.

Two implementations of the same update, torch.optim.SGD (momentum, L2 weight decay, no dampening) and
torch.optim.Adam (L2 weight decay, bias correction):
- `SGD`, `Adam`: PyTorch's fused kernels (`fused=True`), one pass over parameters, gradients and state per
  step, which matters once K stacked replicates no longer fit in the CPU's caches. Every row (replicate)
  shares one learning rate, momentum, weight decay and Adam step count.
- `RowSGD`, `RowAdam`: each row its own learning rate, momentum, weight decay and Adam step count: the members of
  a pack (different configs stacked in one population, some starting later than others). The same fused
  kernels, called once per row on the row's slice of every tensor, so each row is updated bit for bit as it
  would be alone; the rates and step counts are [K] tensors on the device, so a CUDA graph still captures the
  whole step and the rates can change between replays.
Both keep their state as lists of [K, ...] tensors; the step counts are saved per row in either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensors = list[torch.Tensor]


def _rows(values: Sequence[float], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.tensor(list(values), dtype=dtype or like.dtype, device=like.device)


class StackedOptimizer:
    state_names: tuple[str, ...] = ()

    def __init__(self, params: Tensors) -> None:
        self.params = params
        self.rows = params[0].shape[0]

    def set_lr(self, value: float | torch.Tensor) -> None:
        """One rate for every row (a float), or one per row (a [K] tensor) for the per-row optimizers."""
        if isinstance(value, torch.Tensor):
            self.lr.copy_(value)
        else:
            self.lr.fill_(value)

    def state_dict(self) -> dict[str, Tensors]:
        state = {name: [t.clone() for t in getattr(self, name)] for name in self.state_names}
        if "steps" in state:  # saved per row, whichever implementation wrote them
            state["steps"] = [self.row_steps().clone()]
        return state

    def load_state_dict(self, state: dict[str, Tensors]) -> None:
        for name, tensors in state.items():
            if not getattr(self, name) or not tensors:
                continue  # momentum buffers that one side keeps and the other does not need (momentum 0)
            if name == "steps":
                self.load_steps(tensors[0])
                continue
            for mine, saved in zip(getattr(self, name), tensors, strict=True):
                mine.copy_(saved)

    def row_steps(self) -> torch.Tensor:
        raise NotImplementedError

    def load_steps(self, saved: torch.Tensor) -> None:
        raise NotImplementedError

    def restart_rows(self, rows: list[int]) -> None:
        """Rows that start training now get a fresh optimizer (zero momentum, zero moments, step 0)."""
        raise NotImplementedError(f"{type(self).__name__} keeps one state for all rows; use the per-row optimizer")


class SGD(StackedOptimizer):
    state_names = ("buffers",)

    def __init__(self, params: Tensors, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params)
        self.lr = torch.tensor(lr, dtype=torch.float32, device=params[0].device)
        self.momentum = momentum
        self.weight_decay = weight_decay
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
        super().__init__(params)
        self.lr = torch.tensor(lr, dtype=torch.float32, device=params[0].device)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=params[0].device)]

    def row_steps(self) -> torch.Tensor:
        return self.steps[0].expand(self.rows)

    def load_steps(self, saved: torch.Tensor) -> None:
        if saved.dim() and not bool((saved == saved[0]).all()):
            raise ValueError("the saved Adam step counts differ between rows; load them into RowAdam")
        self.steps[0].copy_(saved.flatten()[0] if saved.dim() else saved)

    @torch.no_grad()
    def step(self, grads: Tensors) -> None:
        self.steps[0].add_(1)
        torch._fused_adam_(self.params, grads, self.exp_avg, self.exp_avg_sq, [], self.steps * len(self.params),
                           lr=self.lr, beta1=self.beta1, beta2=self.beta2, weight_decay=self.weight_decay,
                           eps=self.eps, amsgrad=False, maximize=False)


class RowSGD(StackedOptimizer):
    """SGD with its own learning rate, momentum and weight decay per row: the fused kernel once per row (on a
    row's contiguous slice of every tensor), so each row is updated exactly as it would be alone."""

    state_names = ("buffers",)

    def __init__(self, params: Tensors, lr: Sequence[float], momentum: Sequence[float],
                 weight_decay: Sequence[float]) -> None:
        super().__init__(params)
        self.lr = _rows(lr, params[0], torch.float32)  # as the fused kernels hold it
        self.momentum = [float(m) for m in momentum]
        self.weight_decay = [float(w) for w in weight_decay]
        self.buffers = [torch.zeros_like(p) for p in params]

    def restart_rows(self, rows: list[int]) -> None:
        with torch.no_grad():
            for buffer in self.buffers:
                buffer[rows] = 0

    @torch.no_grad()
    def step(self, grads: Tensors) -> None:
        for k in range(self.rows):
            momentum = self.momentum[k]
            torch._fused_sgd_([p[k] for p in self.params], [g[k] for g in grads],
                              [b[k] for b in self.buffers] if momentum else [], weight_decay=self.weight_decay[k],
                              momentum=momentum, lr=self.lr[k], dampening=0.0, nesterov=False, maximize=False,
                              is_first_step=False)


class RowAdam(StackedOptimizer):
    """Adam with its own learning rate, weight decay and step count per row (betas and eps are shared): the fused
    kernel once per row, so each row is updated exactly as it would be alone."""

    state_names = ("exp_avg", "exp_avg_sq", "steps")

    def __init__(self, params: Tensors, lr: Sequence[float], weight_decay: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params)
        first = params[0]
        self.lr = _rows(lr, first, torch.float32)  # as the fused kernels hold it
        self.weight_decay = [float(w) for w in weight_decay]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros(self.rows, dtype=torch.float32, device=first.device)]

    def row_steps(self) -> torch.Tensor:
        return self.steps[0]

    def load_steps(self, saved: torch.Tensor) -> None:
        self.steps[0].copy_(saved.expand(self.rows) if saved.dim() == 0 else saved)

    def restart_rows(self, rows: list[int]) -> None:
        with torch.no_grad():
            for state in (*self.exp_avg, *self.exp_avg_sq, *self.steps):
                state[rows] = 0

    @torch.no_grad()
    def step(self, grads: Tensors) -> None:
        steps = self.steps[0]
        steps.add_(1)
        for k in range(self.rows):
            torch._fused_adam_([p[k] for p in self.params], [g[k] for g in grads], [m[k] for m in self.exp_avg],
                               [v[k] for v in self.exp_avg_sq], [], [steps[k]] * len(self.params), lr=self.lr[k],
                               beta1=self.beta1, beta2=self.beta2, weight_decay=self.weight_decay[k], eps=self.eps,
                               amsgrad=False, maximize=False)


def build_optimizer(name: str, params: Tensors, lr: float | Sequence[float], momentum: float | Sequence[float],
                    weight_decay: float | Sequence[float], per_row: bool = False) -> StackedOptimizer:
    """The fused optimizer when every row shares its settings (floats); the per-row one when they are given per
    row (sequences of K values) or `per_row` asks for it (rows that start late need their own step counts)."""
    values = [lr, momentum, weight_decay]
    if not per_row and all(isinstance(v, int | float) for v in values):
        if name == "sgd":
            return SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
        return Adam(params, lr, weight_decay=weight_decay)
    rows = params[0].shape[0]
    lr, momentum, weight_decay = ([float(v)] * rows if isinstance(v, int | float) else list(v) for v in values)
    if name == "sgd":
        return RowSGD(params, lr, momentum, weight_decay)
    return RowAdam(params, lr, weight_decay)
