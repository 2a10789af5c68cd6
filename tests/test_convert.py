"""`pasu convert`: a trained Branchformer / E-Branchformer -> a late-contextualized device model.

Real tiny ESPnet models (pasu.tools.tiny, 4 layers) with their branch weights set
by hand, real speech clips: the rule picks the layers it should, the package
loads, the decoder and CTC head are the source's bit for bit, the converted
encoder equals the source where the removed attention carried nothing, and the
streamed encoder equals the converted model's own whole-utterance forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pasu.audio import read_audio
from pasu.cli import main as pasu_main
from pasu.encoders import IncrementalEncoder
from pasu.encoders.branch import LateBranchEncoder, blocks_per_layer
from pasu.models import load_model, load_state_dict
from pasu.resources import AUDIO_DIR
from pasu.tools.convert.convert import ConvertOptions, UnsupportedModelError, convert_model, split
from pasu.tools.tiny import TinyModelOptions, build_tiny_model

KINDS = ("branchformer", "e_branchformer")
LAYERS = 4
TOL = 1e-4
CALIB = ConvertOptions(limit=4)
Edit = Callable[[dict[str, torch.Tensor]], None]


def build_source(root: Path, kind: str, edit: Edit | None = None, conf: tuple = ()) -> Path:
    """A tiny 4-layer source model (``conf``: encoder_conf overrides), its weights edited in place by ``edit``."""
    out = build_tiny_model(root, TinyModelOptions(kind=kind, encoder_conf=(("num_blocks", LAYERS), *conf)))
    if edit is not None:
        state = load_state_dict(out / "model.pth")
        edit(state)
        torch.save(state, out / "model.pth")
    return out


def merge_weights(weights: list[float]) -> Edit:
    """Branchformer (learned_ave): every utterance gets exactly these attention-branch weights."""

    def edit(state: dict[str, torch.Tensor]) -> None:
        for i, w in enumerate(weights):
            layer = f"encoder.encoders.{i}."
            for proj in ("weight_proj1", "weight_proj2"):
                state[layer + proj + ".weight"].zero_()
                state[layer + proj + ".bias"].zero_()
            state[layer + "weight_proj1.bias"].fill_(-1e4 if w == 0 else math.log(w / (1 - w)))

    return edit


def constant_attention(layers: list[int], value: float) -> Edit:
    """E-Branchformer: these layers' attention outputs ``value`` everywhere (0: nothing, its merge term too)."""

    def edit(state: dict[str, torch.Tensor]) -> None:
        for i in layers:
            layer = f"encoder.encoders.{i}."
            state[layer + "attn.linear_out.weight"].zero_()
            g = torch.Generator().manual_seed(i)
            state[layer + "attn.linear_out.bias"].copy_(
                value * torch.randn(state[layer + "attn.linear_out.bias"].shape, generator=g)
            )
            if value == 0:
                d = state[layer + "attn.linear_out.bias"].numel()
                state[layer + "depthwise_conv_fusion.bias"][:d] = 0
        return None

    return edit


def zero_attention(layers: list[int]) -> Edit:
    """Branchformer: these layers' attention branch outputs zeros."""

    def edit(state: dict[str, torch.Tensor]) -> None:
        for i in layers:
            state[f"encoder.encoders.{i}.attn.linear_out.weight"].zero_()
            state[f"encoder.encoders.{i}.attn.linear_out.bias"].zero_()

    return edit


# Each kind's source: layers 0 and 1 with attention that weighs (nearly) nothing, 2 and 3 with attention.
SOURCES: dict[str, Edit] = {
    "branchformer": merge_weights([0.0, 0.1, 0.6, 0.15]),
    "e_branchformer": constant_attention([0, 1], 0.0),
}


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.as_tensor(read_audio(sorted(AUDIO_DIR.glob("*.flac"))[0]))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[Path, Path, object]]:
    """{kind: (source dir, converted dir, Conversion)}."""
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(f"convert-{kind}")
        source = build_source(root / "source", kind, SOURCES[kind])
        conversion = convert_model(source, root / "device", AUDIO_DIR, CALIB)
        out[kind] = (source, root / "device", conversion)
    return out


def encode(model: torch.nn.Module, audio: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out, lens = model.encode(audio[None], torch.tensor([audio.numel()]))
    assert int(lens[0]) == out.size(1)
    return out


# -- the rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, threshold, local",
    [
        ([0.05, 0.1, 0.6, 0.15], 0.2, 2),  # layer 3 keeps attention: the attention layers are the top ones
        ([0.3, 0.1, 0.6, 0.7], 0.2, 0),
        ([0.01, 0.02, 0.03, 0.04], 0.2, 3),  # none above: the top layer keeps attention
        ([0.2, 0.2, 0.21, 0.2], 0.2, 2),  # "more than" the threshold
        ([0.1, 0.1, 0.1, 0.5], 0.05, 0),
    ],
)
def test_split_rule(weights, threshold, local):
    assert split(weights, threshold) == local


def test_split_by_hand():
    assert split([0.9] * 4, 0.2, num_attention_blocks=1) == 3
    with pytest.raises(ValueError, match="num_attention_blocks"):
        split([0.9] * 4, 0.2, num_attention_blocks=5)


@pytest.mark.parametrize("kind", KINDS)
def test_rule_picks_the_layers_set_by_hand(pairs, kind):
    source, device, conversion = pairs[kind]
    weights = conversion.attention_weights
    if kind == "branchformer":
        assert weights == pytest.approx([0.0, 0.1, 0.6, 0.15], abs=1e-3)  # measured what was set
        assert conversion.kept_at_or_below_threshold == [3]
    else:
        assert weights[:2] == [0.0, 0.0] and min(weights[2:]) > 0.2
    assert conversion.local_layers == [0, 1] and conversion.attention_layers == [2, 3]
    config = yaml.safe_load((device / "config.yaml").read_text())
    assert config["encoder"] == "late_branchformer"
    assert config["encoder_conf"]["num_local_blocks"] == 2 and config["encoder_conf"]["num_attention_blocks"] == 2
    assert config["pasu"]["attention_branch_weights"] == weights
    card = (device / "model_card.md").read_text()
    assert f"converted by `pasu convert` from tiny-{kind} version" in card and f"{weights[2]:.3f}" in card
    assert config["pasu"]["converted_from"]["path"] == str(source)


# -- the package ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_package_loads_with_the_source_decoder_and_ctc_bit_for_bit(pairs, clip, kind):
    source_dir, device_dir, _ = pairs[kind]
    source, device = load_model(source_dir), load_model(device_dir)
    encoder = device.model.encoder
    assert isinstance(encoder, LateBranchEncoder)
    assert len(encoder.attention_blocks) == 2
    assert len(encoder.local_blocks) == 2 * blocks_per_layer(kind)
    assert device.token_list == source.token_list
    assert {p.name for p in device_dir.iterdir()} >= {"config.yaml", "model.pth", "tokens.txt", "feats_stats.npz"}
    shared = [k for k in source.model.state_dict() if k.startswith(("decoder.", "ctc."))]
    assert any(k.startswith("ctc.") for k in shared) and any(k.startswith("decoder.") for k in shared)
    on_disk, loaded, original = (
        load_state_dict(device_dir / "model.pth"),
        device.model.state_dict(),
        source.model.state_dict(),
    )
    for k in shared:
        assert torch.equal(on_disk[k], original[k]) and torch.equal(loaded[k], original[k]), k
    # the attention layers are the source's top layers, unchanged
    for k, v in original.items():
        if k.startswith("encoder.encoders.3."):
            assert torch.equal(loaded[k.replace("encoder.encoders.3.", "encoder.attention_blocks.1.")], v)
    assert encode(device.model, clip).shape == encode(source.model, clip).shape


@pytest.mark.parametrize(
    "kind, edit, attention_blocks, conf",
    [
        ("branchformer", merge_weights([0.0, 0.0, 0.6, 0.3]), None, ()),  # by the rule
        ("branchformer", zero_attention([0, 1]), None, (("merge_method", "concat"),)),
        ("branchformer", zero_attention([0, 1]), None, (("merge_method", "fixed_ave"), ("cgmlp_weight", 0.7))),
        (
            "branchformer",
            merge_weights([0.0, 0.0, 0.6, 0.3]),
            None,
            (("use_linear_after_conv", True), ("gate_activation", "tanh"), ("cgmlp_conv_kernel", 5)),
        ),
        ("e_branchformer", constant_attention([0, 1], 0.5), 2, ()),  # a constant branch: its mean is exact
        ("e_branchformer", constant_attention([0, 1], 0.5), 2, (("use_ffn", False), ("macaron_ffn", False))),
    ],
)
def test_converted_equals_source_where_attention_weighed_nothing(tmp_path, clip, kind, edit, attention_blocks, conf):
    """Removing a branch that adds nothing but its mean changes nothing: the remapping,
    the sqrt(d) moved past the local layers and the convolutions' edges are exact."""
    source = build_source(tmp_path / "source", kind, edit, conf)
    options = ConvertOptions(limit=2, num_attention_blocks=attention_blocks)
    conversion = convert_model(source, tmp_path / "device", AUDIO_DIR, options)
    assert conversion.local_layers == [0, 1]
    ref = encode(load_model(source).model, clip)
    device = load_model(tmp_path / "device").model
    out = encode(device, clip)
    assert (out - ref).abs().max().item() < TOL
    inc = IncrementalEncoder(device)
    for start in range(0, clip.numel(), 3000):
        inc.feed(clip[start : start + 3000].numpy())
    assert (inc.finish()[0] - out).abs().max().item() < TOL


def test_all_attention_is_the_source_model(tmp_path, clip):
    source = build_source(tmp_path / "source", "branchformer", merge_weights([0.5, 0.6, 0.7, 0.8]))
    assert convert_model(source, tmp_path / "device", AUDIO_DIR, CALIB).local_layers == []
    assert torch.equal(encode(load_model(tmp_path / "device").model, clip), encode(load_model(source).model, clip))


# -- the late encoder: streamed == its own whole-utterance forward ------------------------


@pytest.mark.parametrize("chunk", [160, 1000, 7777, None])
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_encoder_equals_the_converted_model(pairs, clip, kind, chunk):
    model = load_model(pairs[kind][1]).model
    inc = IncrementalEncoder(model)
    assert inc.mode == "incremental"
    chunk = chunk or clip.numel()
    starts = list(range(0, clip.numel(), chunk))
    worst = 0.0
    for n, start in enumerate(starts):
        if n in (len(starts) // 3, 2 * len(starts) // 3) and start > 0:
            out, _ = inc.encode()
            ref = encode(model, clip[:start])
            assert out.shape == ref.shape
            worst = max(worst, (out - ref).abs().max().item())
        inc.feed(clip[start : start + chunk].numpy())
    out, _ = inc.finish()
    ref = encode(model, clip)
    assert out.shape == ref.shape
    assert max(worst, (out - ref).abs().max().item()) < TOL
    assert all(p > 0 for p in inc.stats.local_frames_pushed)  # the local layers ran as audio arrived


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_session_runs_late(pairs, clip, kind):
    from pasu.decoding import DecodingOptions, Recognizer
    from pasu.streaming import StreamingOptions, StreamingSession

    rec = Recognizer(load_model(pairs[kind][1]), DecodingOptions(beam_size=2))
    session = StreamingSession(rec, StreamingOptions.only("late_context"))
    for start in range(0, clip.numel(), 4000):
        session.feed(clip[start : start + 4000].numpy())
    final = session.finalize()
    assert session.fired["late_context"] == 1
    assert [h.token_ids for h in final.nbest] == [h.token_ids for h in rec.recognize([clip.numpy()])[0]]


def test_a_converted_model_loads_where_the_converter_is_not_imported(pairs):
    """The device agent, the cloud and `pasu eval` load it through pasu.models alone."""
    import subprocess
    import sys

    out = pairs["branchformer"][1]
    code = (
        "import sys; from pasu.models import load_model; m = load_model(sys.argv[1]); "
        "assert 'pasu.tools.convert' not in sys.modules; print(type(m.model.encoder).__name__)"
    )
    run = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "LateBranchEncoder"


@pytest.mark.parametrize("kind", KINDS)
def test_padded_batch_equals_single_utterances_and_trains(pairs, kind):
    model: Any = load_model(pairs[kind][1]).model
    torch.manual_seed(0)
    feats, ilens = torch.randn(2, 120, 40), torch.tensor([120, 77])
    with torch.no_grad():
        batch, olens, _ = model.encoder(feats, ilens)
        for i in range(2):
            single, _, _ = model.encoder(feats[i : i + 1, : ilens[i]], ilens[i : i + 1])
            assert (batch[i, : olens[i]] - single[0]).abs().max().item() < TOL
    model.train()
    loss, _, _ = model(
        torch.randn(2, 8000) * 0.1, torch.tensor([8000, 6000]), torch.tensor([[4, 5], [6, 0]]), torch.tensor([2, 1])
    )
    loss.backward()
    assert model.encoder.local_blocks[0].conv_module.conv.weight.grad is not None
    model.eval()


# -- what cannot be converted -----------------------------------------------------------


def test_conformer_is_refused_with_what_to_do_instead(tmp_path, capsys):
    conformer = build_tiny_model(tmp_path / "conformer", TinyModelOptions(kind="conformer"))
    with pytest.raises(UnsupportedModelError, match="Branchformer or E-Branchformer.*cloud only"):
        convert_model(conformer, tmp_path / "out", AUDIO_DIR, CALIB)
    code = pasu_main(["convert", "--model", str(conformer), "--out", str(tmp_path / "out"), "--audio", str(AUDIO_DIR)])
    assert code == 2 and "cannot be converted" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_late_model_is_refused(pairs, tmp_path):
    with pytest.raises(UnsupportedModelError, match="late-contextualized already"):
        convert_model(pairs["branchformer"][1], tmp_path / "out", AUDIO_DIR, CALIB)


# -- distillation ---------------------------------------------------------------------


@pytest.mark.slow
def test_cli_converts_and_distills(tmp_path, capsys):
    """`pasu convert --distill`: ESPnet trains the converted encoder on the source's 1-best
    (decoder and CTC frozen); the package keeps the source's decoder and CTC bit for bit."""
    import json

    source = build_source(tmp_path / "source", "branchformer", merge_weights([0.05, 0.1, 0.6, 0.7]))
    out, test = tmp_path / "device", tmp_path / "test"
    test.mkdir()
    clips = sorted(AUDIO_DIR.glob("*.flac"))[:3]
    (test / "wav.scp").write_text("".join(f"{c.stem} {c}\n" for c in clips))
    (test / "text").write_text((AUDIO_DIR / "text").read_text())
    code = pasu_main(
        ["convert", "--model", str(source), "--out", str(out), "--audio", str(AUDIO_DIR), "--limit", "3",
         "--distill", str(AUDIO_DIR), "--epochs", "1", "--iters-per-epoch", "3", "--batch-bins", "200000",
         "--beam-size", "2", "--eval", str(test), "--json-out", str(tmp_path / "result.json")]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "result.json").read_text())
    assert result["conversion"]["local_layers"] == [0, 1]
    for stage in ("eval_converted", "eval_distilled"):
        assert result[stage]["test"]["utterances"] == 3
    assert json.loads((out / "eval_test.json").read_text()) == result["eval_distilled"]["test"]
    converted = tmp_path / "device.distill" / "converted"
    log = (tmp_path / "device.distill" / "train" / "train.log").read_text()
    assert "1epoch results" in log and "requires_grad = False" in log
    text = (tmp_path / "device.distill" / "data" / "train" / "text").read_text().splitlines()
    assert len(text) >= 15 and all(len(line.split()) > 1 for line in text)  # the teacher's tokens
    before, after, teacher = (load_state_dict(p / "model.pth") for p in (converted, out, source))
    for k, v in teacher.items():
        if k.startswith(("decoder.", "ctc.")):
            assert torch.equal(after[k], v), k
    moved = [k for k in after if k.startswith("encoder.local_blocks.") and not torch.equal(after[k], before[k])]
    assert moved  # the local layers trained
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["pasu"]["distilled"]["epochs"] == 1 and config["token_type"] == "char"
    assert "distilled by `pasu convert --distill`" in (out / "model_card.md").read_text()
    load_model(out)


# -- cut kernels: less look-ahead -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_right_context_cuts_the_kernels_and_streams_exactly(pairs, tmp_path, clip, kind):
    source, device, _ = pairs[kind]
    half = 3  # tiny models: cgmlp_conv_kernel 7
    whole = convert_model(source, tmp_path / "whole", AUDIO_DIR, ConvertOptions(limit=4, right_context=half))
    assert torch.equal(encode(load_model(tmp_path / "whole").model, clip), encode(load_model(device).model, clip)), (
        "a cut at half the kernel is no cut"
    )
    assert whole.local_layers == [0, 1]
    convert_model(source, tmp_path / "cut", AUDIO_DIR, ConvertOptions(limit=4, right_context=0))
    model: Any = load_model(tmp_path / "cut").model
    blocks = model.encoder.local_blocks
    assert all(b.right_context == 0 for b in blocks)
    assert blocks[0].conv_module.conv.weight.size(-1) == half + 1
    ref = encode(model, clip)
    inc = IncrementalEncoder(model)
    for start in range(0, clip.numel(), 1000):
        inc.feed(clip[start : start + 1000].numpy())
        inc.encode()
        # causal local layers: encode() recomputes only the subsampling's pending frames
        assert max(inc.stats.local_frames_peeked) <= 4
    assert (inc.finish()[0] - ref).abs().max().item() < TOL
