"""Local (context-limited) blocks of the late-contextualization encoder.

A :class:`LocalBlock` is a Conformer block without self-attention: macaron
feed-forward, a depthwise-convolution module, feed-forward, final LayerNorm.
Everything in it is frame-wise except the depthwise convolution, whose
receptive field is ``left_context`` frames to the left and ``right_context``
frames to the right.  That bounded receptive field is what lets
:mod:`pasu.encoders.stages` run the block on audio as it arrives.

Two deliberate departures from ESPnet's Conformer ``ConvolutionModule``:

* **Asymmetric (limited right-context) kernel.**  The kernel sees
  ``kernel_size - 1 - right_context`` past frames and ``right_context`` future
  ones.  A frame's output is final as soon as ``right_context`` more frames
  have arrived; until then it is recomputed at each ``encode()`` with the
  current end of input as the utterance end.  Because that recomputation is
  cheap (``right_context`` frames per block), a little look-ahead buys
  modelling quality at no latency cost; ``right_context=0`` makes it causal.
* **LayerNorm instead of BatchNorm.**  BatchNorm normalizes with statistics
  pooled over the batch *and time* during training (padded frames included),
  so a frame's training-time value depends on other frames and utterances,
  and its running statistics drift from what a chunk sees at inference.
  LayerNorm is strictly per frame: the streamed and the whole-utterance
  computation are the same function.
"""

from __future__ import annotations

from typing import Any

import torch
from espnet2.legacy.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from espnet2.legacy.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)
from torch import nn


class LocalConvModule(nn.Module):
    """Pointwise conv + GLU -> depthwise conv (limited context) -> LN -> act -> pointwise.

    Split into :meth:`gate` (frame-wise, before the depthwise conv),
    :meth:`depthwise` (the only cross-frame op, *valid* convolution over an
    already padded input) and :meth:`project` (frame-wise) so that a streaming
    runner can cache exactly the depthwise input it needs.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        right_context: int,
        activation: nn.Module,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= right_context < kernel_size:
            raise ValueError(
                f"right_context must be in [0, kernel_size); got {right_context} for kernel_size {kernel_size}"
            )
        self.kernel_size = kernel_size
        self.right_context = right_context
        self.left_context = kernel_size - 1 - right_context
        self.pointwise_conv1 = nn.Linear(channels, 2 * channels, bias=bias)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=0, groups=channels, bias=bias)
        self.norm = nn.LayerNorm(channels)
        self.pointwise_conv2 = nn.Linear(channels, channels, bias=bias)
        self.activation = activation

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> GLU output (B, T, C), the depthwise conv's input."""
        return nn.functional.glu(self.pointwise_conv1(x), dim=-1)

    def depthwise(self, g: torch.Tensor) -> torch.Tensor:
        """Valid depthwise conv: (B, T + K - 1, C) -> (B, T, C)."""
        return self.depthwise_conv(g.transpose(1, 2)).transpose(1, 2)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Frame-wise tail of the module: LN -> activation -> pointwise conv."""
        return self.pointwise_conv2(self.activation(self.norm(h)))

    def pad(self, g: torch.Tensor) -> torch.Tensor:
        """Zero-pad the time axis as a whole utterance sees it."""
        return nn.functional.pad(g, (0, 0, self.left_context, self.right_context))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Whole-sequence forward.

        ``mask`` (B, 1, T), True on real frames: padded frames are zeroed
        before the depthwise conv so a padded utterance's last frames see the
        same zeros they see when encoded alone (as ESPnet does).
        """
        g = self.gate(x)
        if mask is not None:
            g = g.masked_fill(~mask.transpose(1, 2).bool(), 0.0)
        return self.project(self.depthwise(self.pad(g)))


class ConvContext:
    """A local block's receptive field: its ``conv_module``'s frames to the left and right."""

    conv_module: Any

    @property
    def left_context(self) -> int:
        return self.conv_module.left_context

    @property
    def right_context(self) -> int:
        return self.conv_module.right_context


class LocalBlock(ConvContext, nn.Module):
    """Macaron FF -> local conv module -> FF -> LayerNorm (no self-attention).

    The residual structure mirrors ESPnet's Conformer ``EncoderLayer``
    (``normalize_before`` pre-/post-LN, half-step feed-forwards).  The block
    is exposed in two frame-wise halves around the depthwise convolution:
    ``pre`` (up to the GLU) and ``post`` (after it); ``forward`` is just
    ``post(pre(x), depthwise(pad(g)))``, so streamed and batch paths share code.
    """

    def __init__(
        self,
        size: int,
        linear_units: int,
        kernel_size: int,
        right_context: int,
        dropout_rate: float,
        activation: nn.Module,
        normalize_before: bool = True,
    ) -> None:
        super().__init__()
        self.size = size
        self.normalize_before = normalize_before
        # ESPnet leaves `activation` unannotated: pyright infers ReLU from its default.
        self.feed_forward_macaron = PositionwiseFeedForward(
            size,
            linear_units,
            dropout_rate,
            activation,  # pyright: ignore[reportArgumentType]
        )
        self.feed_forward = PositionwiseFeedForward(
            size,
            linear_units,
            dropout_rate,
            activation,  # pyright: ignore[reportArgumentType]
        )
        self.conv_module = LocalConvModule(size, kernel_size, right_context, activation)
        self.norm_ff_macaron = LayerNorm(size)
        self.norm_conv = LayerNorm(size)
        self.norm_ff = LayerNorm(size)
        self.norm_final = LayerNorm(size)
        self.dropout = nn.Dropout(dropout_rate)

    def _residual(self, x: torch.Tensor, fn, norm: nn.Module, scale: float = 1.0) -> torch.Tensor:
        y = fn(norm(x) if self.normalize_before else x)
        x = x + scale * self.dropout(y)
        return x if self.normalize_before else norm(x)

    def pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame-wise part before the depthwise conv.

        Returns ``(residual, g)``: the conv module's residual input and the
        depthwise conv's input (GLU output), both (B, T, D).
        """
        x = self._residual(x, self.feed_forward_macaron, self.norm_ff_macaron, 0.5)
        g = self.conv_module.gate(self.norm_conv(x) if self.normalize_before else x)
        return x, g

    def post(self, residual: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        """Frame-wise part after the depthwise conv (``conv``: its output)."""
        x = residual + self.dropout(self.conv_module.project(conv))
        if not self.normalize_before:
            x = self.norm_conv(x)
        x = self._residual(x, self.feed_forward, self.norm_ff, 0.5)
        return self.norm_final(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``mask`` (B, 1, T) True on real frames."""
        residual, g = self.pre(x)
        if mask is not None:
            g = g.masked_fill(~mask.transpose(1, 2).bool(), 0.0)
        conv = self.conv_module.depthwise(self.conv_module.pad(g))
        return self.post(residual, conv)
