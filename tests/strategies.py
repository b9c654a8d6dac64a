"""Hypothesis strategies for convolution configurations (shared by the operator and pinv tests)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from invertnet.operators import ConvOperator


@dataclass(frozen=True)
class ConvConfig:
    c_in_group: int
    c_out_group: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    mode: str
    size: tuple[int, int]
    bias: bool

    def conv(self, seed: int = 0) -> torch.nn.Conv2d:
        torch.manual_seed(seed)
        conv = torch.nn.Conv2d(
            self.c_in_group * self.groups,
            self.c_out_group * self.groups,
            self.kernel,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias,
            padding_mode=self.mode,
        ).double()
        with torch.no_grad():
            conv.weight.normal_()
            if conv.bias is not None:
                conv.bias.normal_()
        return conv

    def operator(self, seed: int = 0) -> ConvOperator:
        return ConvOperator.from_conv(self.conv(seed), self.size)


@st.composite
def conv_configs(draw: st.DrawFn, full_rank: bool = False) -> ConvConfig:
    """Small conv layers; with ``full_rank`` at least as many filters per group as patch entries."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    mode = draw(st.sampled_from(["zeros", "zeros", "circular", "reflect", "replicate"]))
    groups = draw(st.integers(1, 2))
    c_in_group = draw(st.integers(1, 2))
    patch = c_in_group * kernel[0] * kernel[1]
    c_out_group = patch + draw(st.integers(0, 2)) if full_rank else draw(st.integers(1, patch + 2))
    span = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    lower = [max(span[i] - 2 * padding[i], padding[i] + 1, 2) for i in range(2)]
    size = (draw(st.integers(lower[0], lower[0] + 6)), draw(st.integers(lower[1], lower[1] + 6)))
    return ConvConfig(
        c_in_group, c_out_group, groups, kernel, stride, padding, dilation, mode, size, draw(st.booleans())
    )
