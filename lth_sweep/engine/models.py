"""The model zoo, each model naming its prunable tensors and their kind.

Every model is a plain nn.Module, initialized by `build_model` from the global torch RNG (the caller seeds
it), and works under `torch.func.functional_call` + `torch.func.vmap` with stacked parameters and
buffers (the engine trains K replicates as one stacked model): no in-place ops on activations, no
`.item()`, no data-dependent Python control flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lth_sweep.config import ModelConfig
from lth_sweep.errors import UserError

CONV_PLANS = {  # Frankle & Carbin (2019), Figure 2: (width, max-pool after) per 3x3 conv
    "conv2": [(64, False), (64, True)],
    "conv4": [(64, False), (64, True), (128, False), (128, True)],
    "conv6": [(64, False), (64, True), (128, False), (128, True), (256, False), (256, True)],
}
VGG16_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
IMAGE_MODELS = ("conv2", "conv4", "conv6", "resnet20", "vgg16")


class ZooModel(nn.Module):
    """Base class: conv weights are "conv", linear weights "fc", and `self.output`'s weight "output"."""

    output: nn.Linear

    def prunable_kinds(self) -> dict[str, str]:
        """`named_parameters()` names of the prunable tensors -> "conv" | "fc" | "output"."""
        kinds = {}
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                kinds[f"{name}.weight"] = "conv"
            elif isinstance(module, nn.Linear):
                kinds[f"{name}.weight"] = "output" if module is self.output else "fc"
        return kinds

    def initialize(self) -> None:
        """Sets the model's initial weights from the global torch RNG, as its paper does."""
        raise NotImplementedError

    def _init_glorot(self) -> None:
        """Glorot/Xavier normal weights and zero biases, as in the lottery ticket paper."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _init_kaiming(self) -> None:
        """Kaiming normal (fan_in, relu) weights, zero biases, BatchNorm weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


class MLP(ZooModel):
    """Flatten -> fc1 -> ReLU -> ... -> fcN -> ReLU -> output (LeNet-300-100 is widths [300, 100])."""

    initialize = ZooModel._init_glorot

    def __init__(self, in_features: int, widths: list[int], num_classes: int) -> None:
        super().__init__()
        self.depth = len(widths)
        dims = [in_features, *widths]
        for i in range(1, len(dims)):
            self.add_module(f"fc{i}", nn.Linear(dims[i - 1], dims[i]))
        self.output = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for i in range(1, self.depth + 1):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return self.output(x)


class ConvNet(ZooModel):
    """Conv-2/4/6: 3x3 convs (padding 1) with ReLU and 2x2 max-pools, then fc 256, fc 256, output."""

    initialize = ZooModel._init_glorot

    def __init__(self, plan: list[tuple[int, bool]], input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.pools = [pool for _, pool in plan]
        for i, (f_out, pool) in enumerate(plan, start=1):
            self.add_module(f"conv{i}", nn.Conv2d(channels, f_out, 3, padding=1))
            channels = f_out
            if pool:
                height, width = height // 2, width // 2
        self.fc1 = nn.Linear(channels * height * width, 256)
        self.fc2 = nn.Linear(256, 256)
        self.output = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, pool in enumerate(self.pools, start=1):
            x = F.relu(getattr(self, f"conv{i}")(x))
            if pool:
                x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.output(x)


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN projection shortcut when the shape changes (as open_lth)."""

    def __init__(self, f_in: int, f_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(f_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(ZooModel):
    """CIFAR ResNet-20 (He et al. 2016): conv 16 + BN, 3 stages x 3 blocks of 16/32/64, avg pool, output."""

    initialize = ZooModel._init_kaiming

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, f_in = [], 16
        for stage, f_out in enumerate((16, 32, 64)):
            for i in range(3):
                blocks.append(BasicBlock(f_in, f_out, stride=2 if stage > 0 and i == 0 else 1))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.output(x.mean(dim=(2, 3)))


class ConvBN(nn.Module):
    """3x3 conv (padding 1) -> BatchNorm -> ReLU."""

    def __init__(self, f_in: int, f_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class VGG16(ZooModel):
    """CIFAR VGG-16 as in open_lth: 13 conv-BN-ReLU layers, 4 max-pools, 2x2 average pool, output.

    The final average pool covers the whole remaining map (2x2 on 32x32 input, as open_lth's AvgPool2d(2)),
    so the model also runs on 28x28 input.
    """

    initialize = ZooModel._init_kaiming

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for spec in VGG16_PLAN:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(ConvBN(channels, int(spec)))
                channels = int(spec)
        self.layers = nn.Sequential(*layers)
        self.output = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        return self.output(x.mean(dim=(2, 3)))


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, initialize: bool = True) -> ZooModel:
    """Build `cfg.name` for inputs of `input_shape` (no batch dimension), initialized from the torch RNG (or, with
    `initialize=False`, for weights that are loaded next: PyTorch's default init only, much cheaper)."""
    model = zoo_model(cfg, input_shape, num_classes)
    if initialize:
        model.initialize()
    return model


def zoo_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ZooModel:
    input_shape = tuple(input_shape)
    if cfg.name in IMAGE_MODELS and len(input_shape) != 3:
        raise UserError("model.name", f"{cfg.name} needs image input (mnist, fashion_mnist, cifar10); "
                                      "for mnist1d use mlp or lenet_300_100")
    in_features = 1
    for size in input_shape:
        in_features *= size
    if cfg.name == "mlp":
        return MLP(in_features, list(cfg.widths), num_classes)
    if cfg.name == "lenet_300_100":
        return MLP(in_features, [300, 100], num_classes)
    if cfg.name in CONV_PLANS:
        return ConvNet(CONV_PLANS[cfg.name], input_shape, num_classes)
    if cfg.name == "resnet20":
        return ResNet20(input_shape, num_classes)
    if cfg.name == "vgg16":
        return VGG16(input_shape, num_classes)
    raise UserError("model.name", f"unknown model {cfg.name!r}")
