"""How much each Branchformer layer relies on self-attention, measured on real audio.

With ``merge_method: learned_ave`` every layer mixes its attention branch and
its cgMLP (convolution) branch with input-dependent weights ``w_att + w_mlp =
1`` (softmax over two pooled projections). PASU keeps attention in the device
encoder only where the trained cloud model gives it a real share (> 0.2); this
module measures the mean ``w_att`` per layer over a few utterances.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from pasu.audio import read_audio, read_wav_scp

log = logging.getLogger(__name__)


def measure_branch_weights(model_dir: Path, data_dir: Path, limit: int = 100) -> list[float]:
    """Mean attention-branch weight of each encoder layer (bottom first)."""
    from pasu.models import load_model

    loaded = load_model(model_dir)
    layers = list(getattr(loaded.model.encoder, "encoders", []))
    if not layers or not hasattr(layers[0], "weight_proj1"):
        raise ValueError(f"{model_dir} is not a Branchformer with merge_method learned_ave")
    logits: list[dict[int, torch.Tensor]] = [{} for _ in layers]
    hooks = []
    for i, layer in enumerate(layers):
        for branch, proj in ((0, layer.weight_proj1), (1, layer.weight_proj2)):
            hooks.append(
                proj.register_forward_hook(lambda _m, _in, out, i=i, b=branch: logits[i].__setitem__(b, out.detach()))
            )
    sums = [0.0] * len(layers)
    n = 0
    try:
        items = list(read_wav_scp(data_dir).values())[:limit]
        for wav in tqdm(items, desc="branch weights", unit="utt", leave=False):
            x = torch.as_tensor(read_audio(wav), dtype=torch.float32).unsqueeze(0)
            with torch.inference_mode():
                loaded.model.encode(x, torch.tensor([x.size(1)]))
            for i in range(len(layers)):
                w = torch.softmax(torch.cat([logits[i][0], logits[i][1]], dim=-1), dim=-1)
                sums[i] += float(w[0, 0])
            n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise ValueError(f"no utterances in {data_dir}")
    return [s / n for s in sums]
