"""pasu.tools.train.grow: the cloud Conformer grown from a late-context encoder computes the same function.

Exact up to one known difference: the local blocks normalise their convolution
with LayerNorm, ESPnet's Conformer with BatchNorm. With both set to identity the
grown Conformer must reproduce the late-context encoder to float precision; that
checks every other piece of the mapping (kernel placement, the sqrt(d) scaling,
the zero-initialised new attention, the copied attention blocks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from pasu.encoders.late import LateContextEncoder
from pasu.tools.train.grow import conformer_init_state, deepen_conformer_state, write_conformer_init

D, HEADS, UNITS, KERNEL, RIGHT = 32, 4, 64, 7, 2  # local kernel: 4 past, 2 future taps


def late(num_local: int, num_attention: int) -> LateContextEncoder:
    torch.manual_seed(0)
    enc = LateContextEncoder(
        input_size=20,
        output_size=D,
        attention_heads=HEADS,
        linear_units=UNITS,
        num_local_blocks=num_local,
        num_attention_blocks=num_attention,
        cnn_module_kernel=KERNEL,
        local_right_context=RIGHT,
        attention_cnn_module_kernel=5,
    )
    for p in enc.parameters():  # trained-looking weights: no zero biases, no unit norms
        p.data.add_(0.05 * torch.randn_like(p))
    return enc.eval()


def conformer(blocks: int, kernel: int, units: int = UNITS) -> ConformerEncoder:
    return ConformerEncoder(
        input_size=20,
        output_size=D,
        attention_heads=HEADS,
        linear_units=units,
        num_blocks=blocks,
        input_layer="conv2d",
        normalize_before=True,
        macaron_style=True,
        rel_pos_type="latest",
        pos_enc_layer_type="rel_pos",
        selfattention_layer_type="rel_selfattn",
        activation_type="swish",
        use_cnn_module=True,
        cnn_module_kernel=kernel,
    ).eval()


def grow(device: LateContextEncoder, kernel: int, units: int = UNITS) -> ConformerEncoder:
    state = {f"encoder.{k}": v for k, v in device.state_dict().items()}
    grown = conformer_init_state(
        state, kernel=kernel, local_left_context=KERNEL - 1 - RIGHT, attention_heads=HEADS, linear_units=units
    )
    cloud = conformer(len(device.local_blocks) + len(device.attention_blocks), kernel, units)
    target = cloud.state_dict()
    enc = {k.removeprefix("encoder."): v for k, v in grown.items() if k.startswith("encoder.")}
    assert set(enc) <= set(target) and all(target[k].shape == v.shape for k, v in enc.items())
    target.update(enc)
    cloud.load_state_dict(target)
    return cloud


def encode(enc: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return enc(x, torch.tensor([x.size(1)]))[0]


@pytest.mark.parametrize(("kernel", "units"), [(9, UNITS), (11, UNITS), (9, 3 * UNITS)])
def test_grown_conformer_equals_the_late_context_encoder(kernel: int, units: int) -> None:
    device = late(num_local=2, num_attention=2)
    cloud = grow(device, kernel, units)
    for block in device.local_blocks:
        block.conv_module.norm = torch.nn.Identity()
    for layer in list(cloud.encoders)[:2]:
        layer.conv_module.norm = torch.nn.Identity()
    x = torch.randn(1, 80, 20)
    torch.testing.assert_close(encode(cloud, x), encode(device, x), atol=1e-4, rtol=1e-4)


def test_without_local_blocks_the_copy_is_exact() -> None:
    device = late(num_local=0, num_attention=2)
    cloud = grow(device, 5)
    x = torch.randn(1, 64, 20)
    torch.testing.assert_close(encode(cloud, x), encode(device, x), atol=1e-4, rtol=1e-4)


def test_a_kernel_too_narrow_for_the_local_taps_is_refused(tmp_path: Path) -> None:
    device = late(num_local=1, num_attention=1)
    torch.save({f"encoder.{k}": v for k, v in device.state_dict().items()}, tmp_path / "d.pth")
    with pytest.raises(ValueError, match="does not fit"):
        write_conformer_init(
            tmp_path / "d.pth",
            tmp_path / "g.pth",
            kernel=7,
            local_left_context=KERNEL - 1 - RIGHT,
            attention_heads=HEADS,
        )


@pytest.mark.parametrize("after", [[0], [1, 3], [0, 1, 2, 3]])
def test_deepened_conformer_computes_the_same_function(after: list[int]) -> None:
    torch.manual_seed(0)
    cloud = conformer(4, 5)
    for p in cloud.parameters():  # trained-looking weights: no unit norms, no zero biases
        p.data.add_(0.05 * torch.randn_like(p))
    state = {f"encoder.{k}": v for k, v in cloud.state_dict().items()}
    deeper = conformer(4 + len(after), 5)
    deeper.load_state_dict({k.removeprefix("encoder."): v for k, v in deepen_conformer_state(state, after).items()})
    x = torch.randn(2, 64, 20)
    torch.testing.assert_close(encode(deeper, x), encode(cloud, x), atol=1e-4, rtol=1e-4)
    # the new layers really are new: their residual outputs start at zero
    new_layer = deeper.encoders[after[0] + 1]
    assert not new_layer.feed_forward.w_2.weight.any() and not new_layer.self_attn.linear_out.weight.any()


def test_deepen_refuses_a_layer_the_encoder_lacks() -> None:
    state = {f"encoder.{k}": v for k, v in conformer(2, 5).state_dict().items()}
    with pytest.raises(ValueError, match="no encoder layers \\[5\\]"):
        deepen_conformer_state(state, [5])


def test_write_deeper_model_makes_a_package_with_the_new_depth(tmp_path: Path) -> None:
    import yaml

    from pasu.tools.train.grow import main

    src = tmp_path / "cloud"
    src.mkdir()
    (src / "config.yaml").write_text(yaml.safe_dump({"encoder": "conformer", "encoder_conf": {"num_blocks": 2}}))
    torch.save({f"encoder.{k}": v for k, v in conformer(2, 5).state_dict().items()}, src / "model.pth")
    (src / "tokens.txt").write_text("<blank>\n")
    assert main(["--model", str(src), "--out", str(tmp_path / "deeper"), "--after", "0,1"]) == 0
    out = tmp_path / "deeper"
    assert yaml.safe_load((out / "config.yaml").read_text())["encoder_conf"]["num_blocks"] == 4
    assert (out / "tokens.txt").read_text() == "<blank>\n"
    history = yaml.safe_load((out / "config.yaml").read_text())["pasu"]["history"]
    assert "deepened from 2 to 4 Conformer layers" in history[-1]
    state = torch.load(out / "model.pth")
    conformer(4, 5).load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()})
    (src / "config.yaml").write_text(yaml.safe_dump({"encoder": "transformer", "encoder_conf": {}}))
    with pytest.raises(ValueError, match="only a conformer"):
        main(["--model", str(src), "--out", str(tmp_path / "x"), "--after", "0"])
