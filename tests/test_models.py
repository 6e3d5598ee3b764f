"""The model zoo: shapes, prunable kinds, initialization, and the stacked (vmap) replicates contract."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lth_sweep.config import ModelConfig
from lth_sweep.engine.models import build_model
from lth_sweep.errors import UserError

CIFAR, MNIST, MNIST1D = (3, 32, 32), (1, 28, 28), (40,)
CASES = [  # (model, input shape, expected kind counts {conv, fc, output})
    ("mlp", MNIST1D, {"fc": 2, "output": 1}),
    ("mlp", MNIST, {"fc": 2, "output": 1}),
    ("lenet_300_100", MNIST, {"fc": 2, "output": 1}),
    ("lenet_300_100", MNIST1D, {"fc": 2, "output": 1}),
    ("conv2", CIFAR, {"conv": 2, "fc": 2, "output": 1}),
    ("conv2", MNIST, {"conv": 2, "fc": 2, "output": 1}),
    ("conv4", CIFAR, {"conv": 4, "fc": 2, "output": 1}),
    ("conv6", CIFAR, {"conv": 6, "fc": 2, "output": 1}),
    ("conv6", MNIST, {"conv": 6, "fc": 2, "output": 1}),
    ("resnet20", CIFAR, {"conv": 21, "output": 1}),  # 19 3x3 convs + 2 projection shortcuts
    ("vgg16", CIFAR, {"conv": 13, "output": 1}),
]
IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape, _ in CASES]


def make(name: str, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name), shape, 10)


@pytest.mark.parametrize("name, shape, counts", CASES, ids=IDS)
def test_output_shape_and_prunable_kinds(name: str, shape: tuple[int, ...], counts: dict[str, int]) -> None:
    model = make(name, shape)
    assert model(torch.randn(4, *shape)).shape == (4, 10)
    kinds = model.prunable_kinds()
    params = dict(model.named_parameters())
    assert Counter(kinds.values()) == counts
    assert set(kinds) <= set(params)
    assert all(name.endswith(".weight") and params[name].dim() in (2, 4) for name in kinds)
    assert [n for n, k in kinds.items() if k == "output"] == ["output.weight"]
    assert params["output.weight"].shape[0] == 10
    bn_params = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)
                 for p in ("weight", "bias")}
    assert not bn_params & set(kinds)


def test_lenet_exact_kinds_and_sizes() -> None:
    model = make("lenet_300_100", MNIST)
    assert model.prunable_kinds() == {"fc1.weight": "fc", "fc2.weight": "fc", "output.weight": "output"}
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {"fc1.weight": (300, 784), "fc1.bias": (300,), "fc2.weight": (100, 300),
                      "fc2.bias": (100,), "output.weight": (10, 100), "output.bias": (10,)}


def test_mlp_widths() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", widths=[32, 16, 8]), MNIST1D, 10)
    assert model.prunable_kinds() == {"fc1.weight": "fc", "fc2.weight": "fc", "fc3.weight": "fc",
                                      "output.weight": "output"}
    assert model.fc1.weight.shape == (32, 40) and model.output.weight.shape == (10, 8)


FC1_IN = [("conv2", 16 * 16 * 64), ("conv4", 8 * 8 * 128), ("conv6", 4 * 4 * 256)]  # Figure 2 of the paper


@pytest.mark.parametrize("name, fc1_in", FC1_IN)
def test_conv_flatten_sizes_match_paper(name: str, fc1_in: int) -> None:
    assert make(name, CIFAR).fc1.weight.shape == (256, fc1_in)


@pytest.mark.parametrize("name", ["conv2", "conv4", "conv6", "resnet20", "vgg16"])
def test_conv_model_on_1d_input_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError) as err:
        build_model(ModelConfig(name=name), MNIST1D, 10)
    assert err.value.key == "model.name"
    assert err.value.message == (f"{name} needs image input (mnist, fashion_mnist, cifar10); "
                                 "for mnist1d use mlp or lenet_300_100")


def test_glorot_init() -> None:
    model = make("lenet_300_100", MNIST)
    assert model.fc1.weight.std().item() == pytest.approx((2 / (784 + 300)) ** 0.5, rel=0.05)
    assert all(not p.any() for n, p in model.named_parameters() if n.endswith("bias"))
    conv = make("conv2", CIFAR)
    assert conv.conv2.weight.std().item() == pytest.approx((2 / (9 * 64 + 9 * 64)) ** 0.5, rel=0.05)
    assert not conv.conv1.bias.any()


@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
def test_kaiming_init_and_batchnorm(name: str) -> None:
    model = make(name, CIFAR)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.numel() >= 9 * 64 * 64:
            fan_in = module.weight[0].numel()
            assert module.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight)) and not module.bias.any()
    assert all(not p.any() for n, p in model.named_parameters() if n.endswith("bias") and ".bn" not in n)


def test_seeded_init_is_reproducible() -> None:
    a, b, c = make("conv2", MNIST, 5), make("conv2", MNIST, 5), make("conv2", MNIST, 6)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name, shape, counts", CASES, ids=IDS)
def test_stacked_replicates_under_vmap(name: str, shape: tuple[int, ...], counts: dict[str, int],
                                       train: bool) -> None:
    models = [make(name, shape, seed).train(train) for seed in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 4, *shape)

    out = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)), in_dims=(0, 0, 0))(params, buffers, x)

    for i, model in enumerate(models):
        torch.testing.assert_close(out[i], model(x[i]), atol=1e-5, rtol=1e-5)
        for key, own in model.named_buffers():  # BatchNorm running stats updated in train mode only
            torch.testing.assert_close(buffers[key][i], own, atol=1e-5, rtol=1e-5)
    if train and name in ("resnet20", "vgg16"):
        first_bn = next(k for k in buffers if k.endswith("running_mean"))
        assert buffers[first_bn].abs().sum() > 0  # the stacked stats really moved
        assert all(buffers[k].eq(1).all() for k in buffers if k.endswith("num_batches_tracked"))
