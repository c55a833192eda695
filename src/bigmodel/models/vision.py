"""Image classifiers, small to large: mlp, the seed's CNN, a batch-norm CNN, a small ResNet.

Each takes ``pixels`` (N, C, H, W), already normalised, and returns logits (N, classes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bigmodel.data.bundle import DataInfo
from bigmodel.models.output import Model, ModelOutput
from bigmodel.models.registry import register_model


class MLP(Model):
    def __init__(self, in_features: int, classes: int, hidden: int, depth: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=self.net(pixels))


class _FlattenChannelsLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.view(ctx.shape).contiguous(memory_format=torch.channels_last)


class Flatten(nn.Module):
    """``nn.Flatten`` that hands a channels-last map its gradient back channels-last. Flattening in
    (C, H, W) order makes the gradient (N, C, H, W)-contiguous, and ``max_pool2d``'s backward then
    converts it and its own result, both ways, every step (a fifth of the seed CNN's bf16 step on two
    cores, by the profiler). Same values, same order, same weights; only the gradient's layout differs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return _FlattenChannelsLast.apply(x)
        return x.flatten(1)


class SeedCNN(Model):
    """The seed's section 4.1 network, fixed: its flatten size is measured, not hard-coded as 64*6*6
    (which is wrong for 28×28 input), it max-pools as the issue asks, and it returns logits (the
    seed's log_softmax fed to CrossEntropyLoss applied softmax twice)."""

    def __init__(self, input_shape: list[int], classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 32, 3, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]  # 64*12*12 for 28×28
        self.fc1 = nn.Linear(flat, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, pixels: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=self.fc2(F.relu(self.fc1(self.features(pixels)))))


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class CNN(Model):
    """VGG-style stages of two conv-BN-ReLU layers; width doubles and resolution halves per stage;
    global average pooling, dropout and a linear head."""

    def __init__(self, channels: int, classes: int, width: int, depth: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for stage in range(depth):
            cout = width * 2**stage
            layers += [conv_bn(cin, cout), conv_bn(cout, cout)]
            if stage < depth - 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, classes)
        )

    def forward(self, pixels: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=self.head(self.features(pixels)))


class BasicBlock(nn.Module):
    """He et al. (2016): two 3×3 convs with a shortcut; a 1×1 conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet(Model):
    """A CIFAR-style ResNet for 28–32 px: a 3×3 stem, three stages at width w, 2w, 4w (the last two
    halving resolution), global average pooling, a linear head."""

    def __init__(self, channels: int, classes: int, width: int, blocks: tuple[int, ...], dropout: float):
        super().__init__()
        self.stem = conv_bn(channels, width)
        stages: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, classes)
        )
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)  # each block starts as the identity (Goyal et al. 2017)

    def forward(self, pixels: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=self.head(self.stages(self.stem(pixels))))


@register_model("mlp", "image")
def mlp(info: DataInfo, hidden: int = 256, depth: int = 2, dropout: float = 0.2) -> nn.Module:
    in_features = 1
    for d in info.input_shape:
        in_features *= d
    return MLP(in_features, info.num_classes, hidden, depth, dropout)


@register_model("seed-cnn", "image")
def seed_cnn(info: DataInfo) -> nn.Module:
    return SeedCNN(info.input_shape, info.num_classes)


@register_model("cnn", "image")
def cnn(info: DataInfo, width: int = 32, depth: int = 3, dropout: float = 0.2) -> nn.Module:
    return CNN(info.input_shape[0], info.num_classes, width, depth, dropout)


@register_model("resnet", "image")
def resnet(
    info: DataInfo, width: int = 32, blocks: tuple[int, ...] = (2, 2, 2), dropout: float = 0.0
) -> nn.Module:
    return ResNet(info.input_shape[0], info.num_classes, width, blocks, dropout)
