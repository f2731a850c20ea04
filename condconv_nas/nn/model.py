"""build_model(spec): an MBConv network where any block may be a CondConv block."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBnAct, Router, SqueezeExcite
from .spec import ArchSpec, BlockSpec

__all__ = ["MBConvBlock", "MBConvNet", "build_model"]


class MBConvBlock(nn.Module):
    """Inverted residual (expand -> depthwise -> SE -> project); CondConv when experts > 1."""

    def __init__(self, block: BlockSpec, spec: ArchSpec) -> None:
        super().__init__()
        e = block.experts if block.condconv else 0
        # One router per block, shared by its expand, depthwise and project convs (CondConv paper).
        self.router = (Router(block.in_channels, block.experts, spec.routing,
                              spec.routing_temperature, spec.routing_dropout)
                       if block.condconv else None)
        self.expand = (ConvBnAct(block.in_channels, block.mid_channels, 1, act=spec.act, experts=e)
                       if block.has_expand else None)
        self.dw = ConvBnAct(block.mid_channels, block.mid_channels, block.kernel, block.stride,
                            groups=block.mid_channels, act=spec.act, experts=e)
        self.se = (SqueezeExcite(block.mid_channels, block.se_channels, spec.act)
                   if block.se_channels else None)
        self.project = ConvBnAct(block.mid_channels, block.out_channels, 1, experts=e)
        self.residual = block.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.router(x) if self.router is not None else None
        y = self.expand(x, r) if self.expand is not None else x
        y = self.dw(y, r)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y, r)
        return x + y if self.residual else y


class MBConvNet(nn.Module):
    """Stem -> MBConv blocks -> optional 1x1 head -> pool -> dropout -> linear."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = ConvBnAct(spec.in_channels, spec.stem_width, spec.stem_kernel,
                              spec.stem_stride, act=spec.act)
        self.blocks = nn.Sequential(*(MBConvBlock(b, spec) for b in spec.blocks()))
        self.head = (ConvBnAct(self.blocks[-1].project.bn.num_features, spec.head_width, 1,
                               act=spec.act)
                     if spec.head_width else nn.Identity())
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.feature_channels, spec.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before pooling."""
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x).mean((2, 3))))


def build_model(spec: ArchSpec) -> MBConvNet:
    """The network a spec describes, with PyTorch's default initialisation for every layer."""
    return MBConvNet(spec)

