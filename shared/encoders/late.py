"""Late-contextualization encoder: local conv blocks below, full attention on top.

PASU's pilot inference wants the encoder output for "the audio so far" many
times per utterance.  With a stock Conformer every such request re-runs the
whole encoder.  Here the lower ``num_local_blocks`` blocks only see a bounded
window (no self-attention), so their output for a frame never changes once its
right context has arrived: :class:`pasu.encoders.IncrementalEncoder` computes
them once per frame as audio arrives.  Only the top ``num_attention_blocks``
(full self-attention, ESPnet Conformer layers) run when a result is wanted.

Positional information is added *after* the local blocks (convolutions are
translation-equivariant and do not need it), right before attention; so the
cached local output does not depend on where the current end of input is.
"""

from __future__ import annotations

import logging

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.legacy.nets.pytorch_backend.conformer.convolution import ConvolutionModule
from espnet2.legacy.nets.pytorch_backend.conformer.encoder_layer import EncoderLayer
from espnet2.legacy.nets.pytorch_backend.nets_utils import get_activation, make_pad_mask
from espnet2.legacy.nets.pytorch_backend.transformer.attention import (
    MultiHeadedAttention,
    RelPositionMultiHeadedAttention,
)
from espnet2.legacy.nets.pytorch_backend.transformer.embedding import (
    PositionalEncoding,
    RelPositionalEncoding,
)
from espnet2.legacy.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from espnet2.legacy.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import (
    Conv2dSubsampling,
    Conv2dSubsampling2,
    Conv2dSubsampling6,
    Conv2dSubsampling8,
    TooShortUttError,
    check_short_utt,
)
from typeguard import typechecked

from pasu.encoders.local_block import LocalBlock

logger = logging.getLogger(__name__)

#: input_layer name -> (ESPnet module, time-axis (kernel, stride) of its convs).
SUBSAMPLING = {
    "conv2d": (Conv2dSubsampling, ((3, 2), (3, 2))),
    "conv2d2": (Conv2dSubsampling2, ((3, 2), (3, 1))),
    "conv2d6": (Conv2dSubsampling6, ((3, 2), (5, 3))),
    "conv2d8": (Conv2dSubsampling8, ((3, 2), (3, 2), (3, 2))),
}


def subsampling_convs(embed: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Time-axis ``(kernel, stride)`` list of an ESPnet Conv2dSubsampling* module."""
    for cls, convs in SUBSAMPLING.values():
        if type(embed) is cls:
            return convs
    raise TypeError(f"unsupported subsampling module {type(embed).__name__}")


class LateContextEncoder(AbsEncoder):
    """Conv2d subsampling -> local conv blocks -> full self-attention blocks.

    Args:
        input_size: Feature dimension (e.g. n_mels).
        output_size: Model dimension.
        attention_heads: Heads of the top self-attention blocks.
        linear_units: Feed-forward hidden units (all blocks).
        num_local_blocks: Context-limited blocks run incrementally.
        num_attention_blocks: Full-context Conformer blocks run at encode time.
        cnn_module_kernel: Depthwise kernel of the local blocks.
        local_right_context: Future frames the local kernel sees (0 = causal);
            each local block delays finality of a frame by this many frames.
        attention_cnn_module_kernel: Kernel of the Conformer conv module in the
            attention blocks (0 disables it).
        dropout_rate, positional_dropout_rate, attention_dropout_rate: Dropouts.
        input_layer: "conv2d" (4x), "conv2d2", "conv2d6" or "conv2d8".
        normalize_before: Pre-LN blocks plus a final LayerNorm (as ESPnet).
        pos_enc_layer_type: "rel_pos" (relative, as Conformer "latest") or "abs_pos".
        activation_type: Activation of the FF and conv modules.
        macaron_style: Macaron FF in the attention blocks (local ones always).
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 1024,
        num_local_blocks: int = 6,
        num_attention_blocks: int = 6,
        cnn_module_kernel: int = 15,
        local_right_context: int = 2,
        attention_cnn_module_kernel: int = 31,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "conv2d",
        normalize_before: bool = True,
        pos_enc_layer_type: str = "rel_pos",
        activation_type: str = "swish",
        macaron_style: bool = True,
        zero_triu: bool = False,
        max_pos_emb_len: int = 5000,
    ) -> None:
        super().__init__()
        self._output_size = output_size
        activation = get_activation(activation_type)
        if input_layer not in SUBSAMPLING:
            raise ValueError(f"input_layer must be one of {sorted(SUBSAMPLING)}, got {input_layer!r}")
        # No positional encoding in the subsampling: it is added before the
        # attention blocks, so the streamed local output is position-free.
        self.embed = SUBSAMPLING[input_layer][0](input_size, output_size, dropout_rate, torch.nn.Identity())
        self.local_blocks = torch.nn.ModuleList(
            LocalBlock(
                output_size,
                linear_units,
                cnn_module_kernel,
                local_right_context,
                dropout_rate,
                activation,
                normalize_before,
            )
            for _ in range(num_local_blocks)
        )
        if pos_enc_layer_type == "rel_pos":
            self.pos_enc = RelPositionalEncoding(output_size, positional_dropout_rate, max_pos_emb_len)

            def attention() -> torch.nn.Module:
                return RelPositionMultiHeadedAttention(attention_heads, output_size, attention_dropout_rate, zero_triu)

        elif pos_enc_layer_type == "abs_pos":
            self.pos_enc = PositionalEncoding(output_size, positional_dropout_rate, max_pos_emb_len)

            def attention() -> torch.nn.Module:
                return MultiHeadedAttention(attention_heads, output_size, attention_dropout_rate)

        else:
            raise ValueError(f"unknown pos_enc_layer_type {pos_enc_layer_type!r}")

        def feed_forward() -> torch.nn.Module:
            return PositionwiseFeedForward(output_size, linear_units, dropout_rate, activation)

        self.attention_blocks = torch.nn.ModuleList(
            EncoderLayer(
                output_size,
                attention(),
                feed_forward(),
                feed_forward() if macaron_style else None,
                (
                    ConvolutionModule(output_size, attention_cnn_module_kernel, activation)
                    if attention_cnn_module_kernel > 0
                    else None
                ),
                dropout_rate,
                normalize_before,
            )
            for _ in range(num_attention_blocks)
        )
        self.normalize_before = normalize_before
        if normalize_before:
            self.after_norm = LayerNorm(output_size)

    def output_size(self) -> int:
        return self._output_size

    # -- the three stages, also used one by one by the incremental runner --
    def forward_embed(self, xs_pad: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Subsample features (B, T, F) -> (B, T', D) and their mask."""
        short, limit = check_short_utt(self.embed, xs_pad.size(1))
        if short:
            raise TooShortUttError(
                f"has {xs_pad.size(1)} frames and is too short for subsampling "
                f"(it needs more than {limit} frames), return empty results",
                xs_pad.size(1),
                limit,
            )
        return self.embed(xs_pad, masks)

    def forward_local(self, xs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Context-limited blocks; frame t depends on a bounded window only."""
        for block in self.local_blocks:
            xs = block(xs, masks)
        return xs

    def forward_attention(self, xs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Positional encoding, full self-attention blocks, final norm."""
        xs = self.pos_enc(xs)
        for layer in self.attention_blocks:
            xs, masks = layer(xs, masks)
        if isinstance(xs, tuple):
            xs = xs[0]
        if self.normalize_before:
            xs = self.after_norm(xs)
        return xs

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """ESPnet encoder interface: (B, T, F), (B,) -> (B, T', D), (B,), None."""
        # torch.compiler.disable (its decorator) hides make_pad_mask's signature from pyright.
        masks = (~make_pad_mask(ilens, maxlen=xs_pad.size(1))[:, None, :]).to(  # pyright: ignore[reportCallIssue]
            xs_pad.device
        )
        xs, masks = self.forward_embed(xs_pad, masks)
        xs = self.forward_local(xs, masks)
        xs = self.forward_attention(xs, masks)
        return xs, masks.squeeze(1).sum(1), None
