"""Grow a full-attention Conformer from a trained late-context encoder.

Why: on 2 CPU cores a from-scratch Conformer/Branchformer learns CTC far more
slowly than the late-context encoder, whose lower blocks are convolutions
(docs/models.md, "What the v1 run taught"). The cloud model must be a full-attention
encoder, so instead of starting it from scratch we start it from the device
encoder and let it train on with attention in *every* layer:

* front end, subsampling, CTC head, final norm: copied;
* Conformer layers ``0 .. L-1`` (L = local blocks): the local block's
  feed-forwards, norms and convolution module, plus a *new* self-attention
  whose output projection starts at zero, so it adds nothing until it learns;
  the local block's asymmetric kernel is placed inside the wider symmetric one
  with zeros on the taps it never had;
* Conformer layers ``L ..``: the device's attention blocks, copied exactly
  (the same ESPnet ``EncoderLayer``), their kernels centred in the wider one;
* the positional scaling: ESPnet's Conformer multiplies the subsampled input by
  sqrt(d) before layer 0, the late-context encoder only before its attention
  blocks; so (when there are local blocks) the subsampling output is divided by
  sqrt(d) and the last local block's final norm multiplied by it, which keeps
  every activation the same.

Optionally the feed-forwards grow wider (``linear_units``): the new hidden units
get random input weights and zero output weights, so they too start silent.

What stays approximate: the local blocks normalise their convolution with
LayerNorm, ESPnet's Conformer with BatchNorm (initialised from the LayerNorm's
affine weights). The result is an ``--init_param`` file for ESPnet's trainer.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

LOCAL = re.compile(r"^encoder\.local_blocks\.(\d+)\.(.+)$")
ATTENTION = re.compile(r"^encoder\.attention_blocks\.(\d+)\.(.+)$")


def _widen_kernel(weight: torch.Tensor, kernel: int, left: int) -> torch.Tensor:
    """Place a (C, 1, k) depthwise kernel with ``left`` past taps into a centred ``kernel``."""
    if kernel % 2 == 0:
        raise ValueError(f"the Conformer kernel must be odd, got {kernel}")
    k = weight.size(-1)
    start = (kernel - 1) // 2 - left
    if start < 0 or start + k > kernel:
        raise ValueError(
            f"a {k}-tap kernel with {left} past taps does not fit a centred {kernel}-tap kernel"
        )
    out = weight.new_zeros(weight.size(0), weight.size(1), kernel)
    out[..., start : start + k] = weight
    return out


def _widen_feed_forward(
    state: dict[str, torch.Tensor], prefix: str, units: int, gen: torch.Generator
) -> None:
    """Give ``prefix`` (w_1, w_2) ``units`` hidden units; the new ones output zero."""
    w1, b1, w2 = state[prefix + "w_1.weight"], state[prefix + "w_1.bias"], state[prefix + "w_2.weight"]
    old, d = w1.shape
    if units < old:
        raise ValueError(f"cannot shrink a feed-forward from {old} to {units} units")
    bound = 1.0 / math.sqrt(d)  # nn.Linear's default init range
    extra = (torch.rand(units - old, d, generator=gen) * 2 - 1) * bound
    state[prefix + "w_1.weight"] = torch.cat([w1, extra])
    state[prefix + "w_1.bias"] = torch.cat([b1, b1.new_zeros(units - old)])
    state[prefix + "w_2.weight"] = torch.cat([w2, w2.new_zeros(d, units - old)], dim=1)


def conformer_init_state(
    device_state: dict[str, torch.Tensor],
    *,
    kernel: int,
    local_left_context: int,
    attention_heads: int,
    linear_units: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """State dict (encoder + CTC) of an ESPnet ``conformer`` model grown from ``device_state``.

    ``device_state`` is an ESPnet checkpoint of a ``late_context`` model;
    ``local_left_context`` is its local kernel's past taps (kernel - 1 - right context);
    ``linear_units`` the Conformer's feed-forward width (None: the device's).
    Keys not returned (the new attention's projections, BatchNorm statistics)
    keep ESPnet's own initialisation, except the new attention's output
    projection, which is zero.
    """
    out: dict[str, torch.Tensor] = {}
    num_local = 1 + max(
        (int(m.group(1)) for k in device_state if (m := LOCAL.match(k))), default=-1
    )
    d = device_state["encoder.after_norm.weight"].numel()
    scale = math.sqrt(d)
    gen = torch.Generator().manual_seed(seed)
    for key, value in device_state.items():
        if key.startswith("encoder.embed.out."):
            out[key] = value / scale if num_local else value
        elif key.startswith(("frontend.", "normalize.", "encoder.embed.conv",
                             "encoder.after_norm", "ctc.")):
            out[key] = value
        elif m := ATTENTION.match(key):
            layer, name = num_local + int(m.group(1)), m.group(2)
            if name == "conv_module.depthwise_conv.weight":
                value = _widen_kernel(value, kernel, (value.size(-1) - 1) // 2)
            out[f"encoder.encoders.{layer}.{name}"] = value
        elif m := LOCAL.match(key):
            layer, name = int(m.group(1)), m.group(2)
            prefix = f"encoder.encoders.{layer}."
            if name == "conv_module.depthwise_conv.weight":
                value = _widen_kernel(value, kernel, local_left_context)
            elif name.startswith("conv_module.pointwise_conv"):
                value = value.unsqueeze(-1) if value.dim() == 2 else value  # Linear -> Conv1d(k=1)
            elif name.startswith("norm_final.") and layer == num_local - 1:
                value = value * scale  # the sqrt(d) the late-context encoder applies here
            out[prefix + name] = value
    for layer in range(num_local):
        prefix = f"encoder.encoders.{layer}."
        out[prefix + "self_attn.linear_out.weight"] = torch.zeros(d, d)
        out[prefix + "self_attn.linear_out.bias"] = torch.zeros(d)
        out[prefix + "norm_mha.weight"] = torch.ones(d)
        out[prefix + "norm_mha.bias"] = torch.zeros(d)
        for name in ("pos_bias_u", "pos_bias_v"):
            w = torch.empty(attention_heads, d // attention_heads)
            out[prefix + f"self_attn.{name}"] = torch.nn.init.xavier_uniform_(w, generator=gen)
    if linear_units is not None:
        for key in [k for k in out if k.endswith(".w_1.weight") and k.startswith("encoder.encoders.")]:
            _widen_feed_forward(out, key.removesuffix("w_1.weight"), linear_units, gen)
    return out


def write_conformer_init(
    device_ckpt: Path,
    out: Path,
    *,
    kernel: int,
    local_left_context: int,
    attention_heads: int,
    linear_units: int | None = None,
) -> Path:
    """Write :func:`conformer_init_state` of an ESPnet checkpoint to ``out`` (a .pth)."""
    from pasu.models import load_state_dict

    state = load_state_dict(device_ckpt)
    grown = conformer_init_state(
        state, kernel=kernel, local_left_context=local_left_context,
        attention_heads=attention_heads, linear_units=linear_units,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(grown, out)
    return out
