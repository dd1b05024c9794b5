"""MobileFaceNet, parameter-compatible with arcface_torch's ``mbf`` checkpoints.

Every building block keeps its modules in a ``layers`` Sequential, because that is how the
checkpoint keys are spelled (``layers.2.layers.1.layers.0.weight``).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv -> BN -> PReLU (``linear=True`` drops the PReLU)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
                 linear: bool = False) -> None:
        super().__init__()
        parts: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                                  nn.BatchNorm2d(cout)]
        if not linear:
            parts.append(nn.PReLU(cout))
        self.layers = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); ``inner`` is the expanded width."""

    def __init__(self, cin: int, cout: int, inner: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(ConvBlock(cin, inner), ConvBlock(inner, inner, 3, stride, 1, groups=inner),
                                    ConvBlock(inner, cout, linear=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.residual else self.layers(x)


class Residual(nn.Module):
    def __init__(self, channels: int, blocks: int, inner: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(channels, channels, inner, 1, True) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv over the 7x7 map, then the linear embedding and its BN."""

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(ConvBlock(512, 512, 7, groups=512, linear=True), nn.Flatten(),
                                    nn.Linear(512, embedding_size, bias=False), nn.BatchNorm1d(embedding_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_size: int = 512, blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
                 scale: int = 2) -> None:
        super().__init__()
        c1, c2 = 64 * scale, 128 * scale
        stem = (ConvBlock(c1, c1, 3, 1, 1, groups=64) if blocks[0] == 1 else Residual(c1, blocks[0], 128))
        self.layers = nn.ModuleList([
            ConvBlock(3, c1, 3, 2, 1),
            stem,
            DepthWise(c1, c1, 128, 2, False),
            Residual(c1, blocks[1], 128),
            DepthWise(c1, c2, 256, 2, False),
            Residual(c2, blocks[2], 256),
            DepthWise(c2, c2, 512, 2, False),
            Residual(c2, blocks[3], 256),
        ])
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(embedding_size)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))
