"""K replicates of one network held as stacked tensors and run as one model.

Parameters and buffers are [K, *shape] leaves; the forward pass is `torch.func.functional_call`
of a weightless copy of the module, vmapped over the replicate dimension when K > 1. Optimizers over
the stacked leaves are K independent optimizers (SGD and Adam are elementwise), and the loss is the
sum of the replicates' mean losses, so each replicate's gradient is exactly its own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

State = dict[str, torch.Tensor]


class Population:
    def __init__(self, template: nn.Module, params: State, buffers: State, prunable_kinds: dict[str, str]):
        self.template = template
        self.params = params
        self.buffers = buffers
        self.prunable_kinds = prunable_kinds

    @classmethod
    def initialize(cls, build: Callable[[], nn.Module], seeds: list[int], device: torch.device) -> Population:
        """Builds one network per seed on the CPU (so every device starts from the same weights)."""
        models = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                models.append(build())
        template = copy.deepcopy(models[0]).to("meta")
        params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).to(device)
                  for n, _ in models[0].named_parameters()}
        buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]).to(device)
                   for n, _ in models[0].named_buffers()}
        for p in params.values():
            p.requires_grad_(True)
        return cls(template, params, buffers, models[0].prunable_kinds())

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def prunable(self) -> State:
        return {name: self.params[name] for name in self.prunable_kinds}

    def train(self, mode: bool = True) -> None:
        self.template.train(mode)

    def _call_one(self, params: State, buffers: State, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """Logits [K, B, classes] for inputs [K, B, ...] (or [B, ...] given to every replicate)."""
        if self.size == 1:
            x_one = x if shared_input else x[0]
            # view, not p[0]: select's backward would zero-fill and copy a full-size gradient every step
            params = {n: p.view(p.shape[1:]) for n, p in self.params.items()}
            buffers = {n: b.view(b.shape[1:]) for n, b in self.buffers.items()}
            return self._call_one(params, buffers, x_one).unsqueeze(0)
        in_dims = (0, 0, None if shared_input else 0)
        return vmap(self._call_one, in_dims=in_dims)(self.params, self.buffers, x)

    def snapshot(self) -> State:
        """A detached copy of every parameter and buffer (the rewind point)."""
        return {n: t.detach().clone() for n, t in {**self.params, **self.buffers}.items()}

    def load(self, state: State) -> None:
        with torch.no_grad():
            for name, tensor in {**self.params, **self.buffers}.items():
                tensor.copy_(state[name])

    def tiled(self, times: int) -> Population:
        """A new population of `times` x K members: member j * K + k starts as a copy of member k."""
        def tile(t: torch.Tensor) -> torch.Tensor:
            return t.detach().repeat(times, *[1] * (t.dim() - 1))

        params = {n: tile(p).requires_grad_(True) for n, p in self.params.items()}
        return Population(self.template, params, {n: tile(b) for n, b in self.buffers.items()},
                          self.prunable_kinds)

    def members(self, start: int, stop: int) -> Population:
        """Members start..stop-1 as a population that shares their storage (views)."""
        return Population(self.template, {n: p[start:stop] for n, p in self.params.items()},
                          {n: b[start:stop] for n, b in self.buffers.items()}, self.prunable_kinds)

    def rows(self, indices: list[int]) -> Population:
        """The members at `indices`, copied (any order; for analysis after training)."""
        return Population(self.template, {n: p.detach()[indices] for n, p in self.params.items()},
                          {n: b[indices] for n, b in self.buffers.items()}, self.prunable_kinds)

    @classmethod
    def concat(cls, parts: list[Population]) -> Population:
        """One population holding the members of `parts`, in order (same network in each part)."""
        if len(parts) == 1:
            return parts[0]
        params = {n: torch.cat([part.params[n].detach() for part in parts]).requires_grad_(True)
                  for n in parts[0].params}
        buffers = {n: torch.cat([part.buffers[n] for part in parts]) for n in parts[0].buffers}
        return cls(parts[0].template, params, buffers, parts[0].prunable_kinds)

    def rows_state(self, indices: list[int]) -> State:
        """A detached copy of the parameters and buffers of the members at `indices`."""
        return {n: t.detach()[indices].clone() for n, t in {**self.params, **self.buffers}.items()}

    def load_rows(self, indices: list[int], state: State) -> None:
        with torch.no_grad():
            for name, tensor in {**self.params, **self.buffers}.items():
                tensor[indices] = state[name]

    def apply_masks(self, masks: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, mask in masks.items():
                self.params[name].mul_(mask)
