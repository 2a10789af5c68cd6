"""Late-contextualized Branchformer / E-Branchformer: the encoder ``pasu convert`` makes.

``encoder: late_branchformer`` (ESPnet-trainable): ESPnet's conv2d subsampling,
``num_local_blocks`` trained layers whose attention branch is removed (their
cgMLP branch kept), then ``num_attention_blocks`` ESPnet Branchformer or
E-Branchformer layers, unchanged, with the relative positional encoding in
front of them. It is a :class:`~pasu.encoders.late.LateContextEncoder`, so
:class:`~pasu.encoders.IncrementalEncoder` streams its local part as audio
arrives and runs only the attention layers at ``encode()``.

How the local layers fit pasu's streaming stages: a stage
(:class:`~pasu.encoders.stages.LocalBlockStage`) runs one block ``pre -> one
depthwise convolution -> post`` and needs every block to keep the width of
the stream it reads. A cgMLP convolves ``cgmlp_linear_units / 2`` channels
(an E-Branchformer layer convolves twice: the cgMLP, then its merge), so the
stream between blocks is wide enough for what a convolution reads —
``[x, r, LN(gate)]`` before the cgMLP's, ``[x, attention, x2]`` before the
merge's, zero-padded to one width — and each block convolves its slice of the
channels. The frame-wise head that widens ``x`` for a layer runs at the end of
the block below it, and for the first layer right after the subsampling's
output projection (:class:`EmbedOut`); the attention part reads ``x`` back.

Where the removed attention branch was, a local layer adds the branch's mean
output measured on the calibration audio (``attention_mean``, folded into the
merge bias for a Branchformer); the late encoder applies sqrt(d) before its
attention layers, a Branchformer before layer 0, so the converted weights move
that factor (``pasu.tools.convert.convert``). Registered with ESPnet's ASR and SLU tasks
when :mod:`pasu.encoders` is imported, so the device agent, the cloud and ``pasu eval``
load a converted model like any other.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.legacy.nets.pytorch_backend.nets_utils import get_activation
from espnet2.legacy.nets.pytorch_backend.transformer.embedding import (
    LegacyRelPositionalEncoding,
    RelPositionalEncoding,
)
from espnet2.legacy.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from espnet2.legacy.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)
from torch import nn
from typeguard import typechecked

from pasu.encoders.late import SUBSAMPLING, LateContextEncoder
from pasu.encoders.local_block import ConvContext

ENCODER_NAME = "late_branchformer"
BRANCH_TYPES = ("branchformer", "e_branchformer")


def espnet_encoder_class(branch_type: str) -> type[AbsEncoder]:
    """ESPnet's encoder class for ``branch_type``."""
    if branch_type == "branchformer":
        from espnet2.asr.encoder.branchformer_encoder import BranchformerEncoder

        return BranchformerEncoder
    if branch_type == "e_branchformer":
        from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder

        return EBranchformerEncoder
    raise ValueError(f"branch_type must be one of {BRANCH_TYPES}, got {branch_type!r}")


def full_conf(branch_type: str, conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` completed with the ESPnet encoder's own defaults."""
    params = inspect.signature(espnet_encoder_class(branch_type).__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **conf}


class _SliceConv(nn.Module):
    """ESPnet's symmetric depthwise conv over channels ``[start, start + channels)``, as a valid conv.

    ``right_context`` below the kernel's half: its future taps are cut (the stream
    waits for fewer frames; :class:`pasu.tools.convert.convert.ConvertOptions`).
    """

    def __init__(self, start: int, channels: int, kernel_size: int, right_context: int | None = None) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"a depthwise kernel must be odd, got {kernel_size}")
        self.start, self.end = start, start + channels
        self.left_context = (kernel_size - 1) // 2
        self.right_context = self.left_context if right_context is None else min(right_context, self.left_context)
        self.kernel_size = self.left_context + 1 + self.right_context
        self.conv = nn.Conv1d(channels, channels, self.kernel_size, padding=0, groups=channels)

    def depthwise(self, g: torch.Tensor) -> torch.Tensor:
        """(B, T + K - 1, width) -> (B, T, channels)."""
        return self.conv(g[..., self.start : self.end].transpose(1, 2)).transpose(1, 2)

    def pad(self, g: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(g, (0, 0, self.left_context, self.right_context))


def _widen(x: torch.Tensor, width: int) -> torch.Tensor:
    return nn.functional.pad(x, (0, width - x.size(-1)))


class CgmlpHead(nn.Module):
    """Frame-wise start of a local layer: x -> [x, r, LN(gate)] (the cgMLP's conv reads LN(gate)).

    E-Branchformer: its macaron feed-forward first.
    """

    def __init__(self, size: int, units: int, macaron: nn.Module | None, dropout_rate: float, width: int) -> None:
        super().__init__()
        self.width = width
        self.feed_forward_macaron = macaron
        if macaron is not None:
            self.norm_ff_macaron = LayerNorm(size)
        self.norm_mlp = LayerNorm(size)
        self.channel_proj1 = nn.Sequential(nn.Linear(size, units), nn.GELU())
        self.csgu_norm = LayerNorm(units // 2)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feed_forward_macaron is not None:
            x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        r, gate = self.channel_proj1(self.norm_mlp(x)).chunk(2, dim=-1)
        return _widen(torch.cat([x, r, self.csgu_norm(gate)], dim=-1), self.width)


class EmbedOut(nn.Linear):
    """The subsampling's output projection, then the first local layer's head.

    A ``Linear`` (pasu's subsampling stage reads its ``out_features``: the width
    of what this module outputs, the stream's).
    """

    def __init__(self, in_features: int, size: int, head: CgmlpHead) -> None:
        super().__init__(in_features, size)
        self.head = head
        self.out_features = head.width

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (nn.Linear's name)
        return self.head(nn.functional.linear(input, self.weight, self.bias))


class _Block(ConvContext, nn.Module):
    """pasu's local-block interface (``pre``, ``conv_module.depthwise``, ``post``) on the stream."""

    conv_module: _SliceConv
    next_head: CgmlpHead | None
    size: int
    width: int

    def pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x

    def post(self, residual: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def emit(self, x: torch.Tensor) -> torch.Tensor:
        """A layer's output onto the stream: the next layer's head, or ``x`` padded."""
        return self.next_head(x) if self.next_head is not None else _widen(x, self.width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Whole sequence; padded frames read as zeros by the convolution, as ESPnet masks them."""
        residual, g = self.pre(x)
        if mask is not None:
            g = g.masked_fill(~mask.transpose(1, 2).bool(), 0.0)
        return self.post(residual, self.conv_module.depthwise(self.conv_module.pad(g)))


class CgmlpConv(_Block):
    """The cgMLP's depthwise conv and the rest of the branch: [x, r, LN(gate)] -> x2.

    Branchformer (``merge``): then the merge (its bias holds the removed
    attention branch's mean) and the final norm: the layer's output.
    E-Branchformer: -> [x, attention_mean, x2], what its merge convolution reads.
    """

    def __init__(
        self,
        size: int,
        units: int,
        kernel_size: int,
        use_linear_after_conv: bool,
        gate_activation: str,
        dropout_rate: float,
        merge: bool,
        width: int,
        next_head: CgmlpHead | None,
        right_context: int | None = None,
    ) -> None:
        super().__init__()
        half = units // 2
        self.size, self.gate_units, self.width = size, half, width
        self.conv_module = _SliceConv(size + half, half, kernel_size, right_context)
        self.csgu_linear = nn.Linear(half, half) if use_linear_after_conv else None
        self.act = nn.Identity() if gate_activation == "identity" else get_activation(gate_activation)
        self.channel_proj2 = nn.Linear(half, size)
        self.dropout = nn.Dropout(dropout_rate)
        self.merge = merge
        if merge:
            self.merge_proj = nn.Linear(size, size)
            self.norm_final = LayerNorm(size)
        else:
            self.attention_mean = nn.Parameter(torch.zeros(size))
        self.next_head = next_head

    def post(self, residual: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        x, r = residual[..., : self.size], residual[..., self.size : self.size + self.gate_units]
        if self.csgu_linear is not None:
            conv = self.csgu_linear(conv)
        x2 = self.dropout(self.channel_proj2(self.dropout(r * self.act(conv))))
        if self.merge:
            return self.emit(self.norm_final(x + self.dropout(self.merge_proj(x2))))
        return _widen(torch.cat([x, self.attention_mean.expand_as(x), x2], dim=-1), self.width)


class FusionConv(_Block):
    """E-Branchformer's merge: depthwise conv over [attention_mean, x2], projection, FF, final norm."""

    def __init__(
        self,
        size: int,
        kernel_size: int,
        feed_forward: nn.Module | None,
        ff_scale: float,
        dropout_rate: float,
        width: int,
        next_head: CgmlpHead | None,
        right_context: int | None = None,
    ) -> None:
        super().__init__()
        self.size, self.width = size, width
        self.conv_module = _SliceConv(size, 2 * size, kernel_size, right_context)
        self.merge_proj = nn.Linear(2 * size, size)
        self.feed_forward = feed_forward
        self.ff_scale = ff_scale
        if feed_forward is not None:
            self.norm_ff = LayerNorm(size)
        self.norm_final = LayerNorm(size)
        self.dropout = nn.Dropout(dropout_rate)
        self.next_head = next_head

    def post(self, residual: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        x, concat = residual[..., : self.size], residual[..., self.size : 3 * self.size]
        x = x + self.dropout(self.merge_proj(concat + conv))
        if self.feed_forward is not None:
            x = x + self.ff_scale * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.emit(self.norm_final(x))


def stream_width(branch_type: str, conf: dict[str, Any]) -> int:
    """Channels of the stream between local blocks."""
    size, units = int(conf["output_size"]), int(conf["cgmlp_linear_units"])
    return size + units if branch_type == "branchformer" else max(size + units, 3 * size)


def _ffn(conf: dict[str, Any]) -> nn.Module | None:
    if not conf.get("use_ffn"):
        return None
    activation = get_activation(conf["ffn_activation_type"])
    return PositionwiseFeedForward(conf["output_size"], conf["linear_units"], conf["dropout_rate"], activation)


def local_head(branch_type: str, conf: dict[str, Any]) -> CgmlpHead:
    """The frame-wise head of one local layer (``conf``: the ESPnet encoder's, defaults filled)."""
    macaron = _ffn(conf) if branch_type == "e_branchformer" and conf["macaron_ffn"] else None
    width = stream_width(branch_type, conf)
    return CgmlpHead(conf["output_size"], conf["cgmlp_linear_units"], macaron, conf["dropout_rate"], width)


def local_layer(
    branch_type: str, conf: dict[str, Any], next_head: CgmlpHead | None, right_context: int | None = None
) -> list[_Block]:
    """The blocks of one attention-free layer after its head; ``next_head``: the layer above's."""
    size, units, dropout = conf["output_size"], conf["cgmlp_linear_units"], conf["dropout_rate"]
    width = stream_width(branch_type, conf)
    conv_args = (size, units, conf["cgmlp_conv_kernel"], conf["use_linear_after_conv"], conf["gate_activation"])
    if branch_type == "branchformer":
        return [CgmlpConv(*conv_args, dropout, True, width, next_head, right_context)]
    scale = 0.5 if conf["use_ffn"] and conf["macaron_ffn"] else 1.0
    return [
        CgmlpConv(*conv_args, dropout, False, width, None, right_context),
        FusionConv(size, conf["merge_conv_kernel"], _ffn(conf), scale, dropout, width, next_head, right_context),
    ]


def blocks_per_layer(branch_type: str) -> int:
    return 1 if branch_type == "branchformer" else 2


class LateBranchEncoder(LateContextEncoder):
    """Subsampling -> attention-free (local) layers -> relative position -> Branchformer layers.

    Args:
        input_size: Feature dimension.
        branch_type: "branchformer" or "e_branchformer" (the source model's encoder).
        num_local_blocks: Source layers whose attention branch was removed (bottom ones).
        num_attention_blocks: Source layers kept whole (top ones).
        branch_conf: The source ESPnet encoder's ``encoder_conf`` (per-layer lists: the
            attention layers' entries only).
        local_right_context: Future frames the local layers' convolutions read (None: the
            source's, half the kernel); fewer means less to recompute when a result is wanted.
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        branch_type: str = "branchformer",
        num_local_blocks: int = 0,
        num_attention_blocks: int = 1,
        branch_conf: dict | None = None,
        local_right_context: int | None = None,
    ) -> None:
        AbsEncoder.__init__(self)
        conf = full_conf(branch_type, {k: v for k, v in (branch_conf or {}).items() if k != "num_blocks"})
        if conf["input_layer"] not in SUBSAMPLING:
            raise ValueError(f"input_layer must be one of {sorted(SUBSAMPLING)}, got {conf['input_layer']!r}")
        if not conf.get("use_cgmlp", True):
            raise ValueError("a late Branchformer needs the cgMLP branch (use_cgmlp: true)")
        size = int(conf["output_size"])
        self._output_size = size
        self.branch_type = branch_type
        # ESPnet builds the attention layers exactly as in the source model.
        source = espnet_encoder_class(branch_type)(input_size, **{**conf, "num_blocks": num_attention_blocks})
        pos_enc = getattr(source.embed, "pos_enc", None)
        if not isinstance(pos_enc, (RelPositionalEncoding, LegacyRelPositionalEncoding)):
            raise ValueError(
                f"pos_enc_layer_type {conf['pos_enc_layer_type']!r}: a late encoder needs the relative "
                "one (rel_pos), which only scales the input of the local layers; an absolute encoding is "
                "added before layer 0, where the streamed local layers would have to see the position"
            )
        self.embed = SUBSAMPLING[conf["input_layer"]][0](input_size, size, conf["dropout_rate"], nn.Identity())
        blocks: list[_Block] = []
        for i in range(num_local_blocks):
            above = local_head(branch_type, conf) if i + 1 < num_local_blocks else None
            if i == 0:
                self.embed.out = EmbedOut(self.embed.out.in_features, size, local_head(branch_type, conf))
            blocks += local_layer(branch_type, conf, above, local_right_context)
        self.local_blocks = nn.ModuleList(blocks)
        self.pos_enc = pos_enc
        self.attention_blocks = nn.ModuleList(list(cast(Any, source).encoders))
        self.normalize_before = True
        self.after_norm = source.after_norm

    def forward_attention(self, xs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The attention layers on ``x``, the first channels of the local layers' stream."""
        return super().forward_attention(xs[..., : self._output_size], masks)


def register() -> None:
    """Add ``late_branchformer`` to ESPnet's ASR and SLU encoder choices (idempotent)."""
    from espnet2.tasks.asr import encoder_choices as asr_encoders
    from espnet2.tasks.slu import encoder_choices as slu_encoders

    for choices in (asr_encoders, slu_encoders):
        choices.classes[ENCODER_NAME] = LateBranchEncoder
