"""The stacked SGD and Adam follow torch.optim step for step, and their state round-trips."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lth_sweep.engine.optim import SGD, Adam, StackedOptimizer, build_optimizer

SHAPES = [(3, 5, 4), (3, 7), (3, 2, 3, 3, 3)]  # replicate dimension first, like the engine's leaves
STEPS = 20
LR_CHANGE_AT = 10
NEW_LR = 4e-3

Ours = Callable[[list[torch.Tensor]], StackedOptimizer]
Theirs = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

CASES: dict[str, tuple[Ours, Theirs]] = {
    "sgd": (lambda p: SGD(p, lr=0.1),
            lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-momentum-wd": (lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2)),
    "sgd-momentum": (lambda p: SGD(p, lr=0.05, momentum=0.5),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5)),
    "adam": (lambda p: Adam(p, lr=1e-2),
             lambda p: torch.optim.Adam(p, lr=1e-2)),
    "adam-wd": (lambda p: Adam(p, lr=3e-3, weight_decay=1e-2),
                lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-2)),
    "adam-betas": (lambda p: Adam(p, lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3),
                   lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3)),
}


def initial_params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for shape in SHAPES]


def grads_at(step: int) -> list[torch.Tensor]:
    """Deterministic pseudo-gradients for one step (varying scale, so Adam's moments matter)."""
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(shape, generator=gen) * (1 + step % 3) for shape in SHAPES]


def torch_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()


def set_torch_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], step: int) -> None:
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m: f"step {step}: {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_optim(case: str) -> None:
    make_ours, make_theirs = CASES[case]
    ours = initial_params()
    theirs = [p.clone().requires_grad_(True) for p in ours]
    opt, ref = make_ours(ours), make_theirs(theirs)
    start = [p.clone() for p in ours]
    for step in range(STEPS):
        if step == LR_CHANGE_AT:
            opt.set_lr(NEW_LR)
            set_torch_lr(ref, NEW_LR)
        grads = grads_at(step)
        opt.step([g.clone() for g in grads])
        torch_step(ref, theirs, grads)
        assert_close(ours, [p.detach() for p in theirs], step)
    assert all(not torch.equal(a, b) for a, b in zip(ours, start, strict=True)), "the parameters must move"


def test_params_updated_in_place() -> None:
    params = initial_params()
    ids = [id(p) for p in params]
    opt = Adam(params, lr=0.1)
    opt.step(grads_at(0))
    assert [id(p) for p in opt.params] == ids and not torch.equal(params[0], initial_params()[0])


def test_set_lr_changes_the_step() -> None:
    params = initial_params()
    opt = SGD(params, lr=0.1)
    opt.set_lr(0.5)
    before = params[1].clone()
    opt.step(grads_at(0))
    torch.testing.assert_close(params[1], before - 0.5 * grads_at(0)[1], rtol=0, atol=1e-6)


def test_grads_not_modified() -> None:
    params = initial_params()
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
    grads = grads_at(0)
    copies = [g.clone() for g in grads]
    opt.step(grads)
    opt.step(grads)
    assert all(torch.equal(g, c) for g, c in zip(grads, copies, strict=True))


@pytest.mark.parametrize("case", ["sgd-momentum-wd", "adam-wd", "sgd"])
def test_state_dict_round_trip_continues_identically(case: str) -> None:
    make_ours, make_theirs = CASES[case]
    uninterrupted = initial_params()
    opt = make_ours(uninterrupted)
    for step in range(LR_CHANGE_AT):
        opt.step(grads_at(step))
    saved_params = [p.clone() for p in uninterrupted]
    saved_state = opt.state_dict()
    frozen = {k: [t.clone() for t in v] for k, v in saved_state.items()}

    for step in range(LR_CHANGE_AT, STEPS):
        opt.step(grads_at(step))
    for key, tensors in saved_state.items():  # the saved state is a copy, not a live view
        assert all(torch.equal(a, b) for a, b in zip(tensors, frozen[key], strict=True)), key

    resumed_params = [p.clone() for p in saved_params]
    resumed = make_ours(resumed_params)
    resumed.load_state_dict(saved_state)
    for step in range(LR_CHANGE_AT, STEPS):
        resumed.step(grads_at(step))
    assert all(torch.equal(a, b) for a, b in zip(resumed_params, uninterrupted, strict=True))

    # and both equal torch.optim run for all STEPS without interruption
    reference = [p.clone().requires_grad_(True) for p in initial_params()]
    ref = make_theirs(reference)
    for step in range(STEPS):
        torch_step(ref, reference, grads_at(step))
    assert_close(resumed_params, [p.detach() for p in reference], STEPS)


def test_adam_without_loaded_state_differs() -> None:
    """Control for the round trip: a fresh Adam (no state) does not continue the same way."""
    params = initial_params()
    opt = Adam(params, lr=1e-2)
    for step in range(LR_CHANGE_AT):
        opt.step(grads_at(step))
    restarted_params = [p.clone() for p in params]
    restarted = Adam(restarted_params, lr=1e-2)
    for step in range(LR_CHANGE_AT, STEPS):
        opt.step(grads_at(step))
        restarted.step(grads_at(step))
    assert not torch.equal(restarted_params[0], params[0])


def test_adam_state_has_step_count() -> None:
    opt = Adam(initial_params(), lr=1e-3)
    for step in range(3):
        opt.step(grads_at(step))
    assert opt.state_dict()["steps"][0].tolist() == [3.0] * SHAPES[0][0]  # saved per row


@pytest.mark.parametrize("name, cls", [("sgd", SGD), ("adam", Adam)])
def test_build_optimizer(name: str, cls: type[StackedOptimizer]) -> None:
    opt = build_optimizer(name, initial_params(), lr=0.25, momentum=0.9, weight_decay=1e-4)
    assert type(opt) is cls and opt.lr.item() == 0.25 and opt.weight_decay == 1e-4
    if cls is SGD:
        assert opt.momentum == 0.9


ROW_SETTINGS = {"lr": [0.05, 0.02, 0.1], "momentum": [0.9, 0.0, 0.5], "weight_decay": [1e-2, 0.0, 1e-3]}


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_per_row_optimizer_is_each_row_alone(name: str) -> None:
    """Rows with their own lr, momentum, weight decay (and a row restarted mid-way) step exactly as each row
    would in the fused optimizer alone (float64, so the comparison is of the arithmetic)."""
    params = [p.double() for p in initial_params()]
    ours = build_optimizer(name, params, **ROW_SETTINGS)

    def alone(k: int, start: list[torch.Tensor]) -> StackedOptimizer:
        return build_optimizer(name, [p[k:k + 1].clone() for p in start],
                               **{key: values[k] for key, values in ROW_SETTINGS.items()})

    rows = [alone(k, params) for k in range(3)]
    for step in range(STEPS):
        grads = [g.double() for g in grads_at(step)]
        if step == 7:  # row 2 starts over: fresh weights and optimizer, in the stack and alone
            fresh = [p.double() for p in initial_params(seed=5)]
            ours.restart_rows([2])
            with torch.no_grad():
                for p, f in zip(params, fresh, strict=True):
                    p[2] = f[2]
            rows[2] = alone(2, fresh)
        ours.step(grads)
        for k, opt in enumerate(rows):
            opt.step([g[k:k + 1].clone() for g in grads])
            for mine, theirs in zip(params, opt.params, strict=True):
                torch.testing.assert_close(mine[k:k + 1], theirs, rtol=0, atol=0,
                                           msg=lambda m, k=k, step=step: f"{name} row {k} step {step}: {m}")


def test_fused_state_loads_into_the_per_row_optimizer_and_back() -> None:
    params = initial_params()
    fused = build_optimizer("adam", params, lr=1e-2, momentum=0.0, weight_decay=0.0)
    for step in range(3):
        fused.step(grads_at(step))
    rows = build_optimizer("adam", [p.clone() for p in params], lr=1e-2, momentum=0.0, weight_decay=0.0,
                           per_row=True)
    rows.load_state_dict(fused.state_dict())
    assert rows.state_dict()["steps"][0].tolist() == [3.0, 3.0, 3.0]
    again = build_optimizer("adam", [p.clone() for p in params], lr=1e-2, momentum=0.0, weight_decay=0.0)
    again.load_state_dict(rows.state_dict())
    assert float(again.steps[0]) == 3.0
    rows.restart_rows([1])
    with pytest.raises(ValueError, match="differ between rows"):
        again.load_state_dict(rows.state_dict())
