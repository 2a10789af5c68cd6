"""Late-contextualization encoder: ESPnet registration, training, and exactness
of the incremental runner against ESPnet's whole-utterance ``ASRModel.encode``."""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import (
    TooShortUttError,
)
from espnet2.tasks.asr import ASRTask, encoder_choices

import pasu.encoders
from pasu.encoders import (
    IncrementalEncoder,
    IncrementalOptions,
    LateContextEncoder,
    NotIncrementalError,
)

TOL = 1e-4
SR = 16000
CHUNKS = [160, 1000, 4000, 7777, None]  # None: the whole audio as one chunk


def load_config() -> dict:
    path = resources.files("pasu") / "resources" / "configs" / "late_tiny.yaml"
    return yaml.safe_load(path.read_text())


def build(config: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ASRTask.build_model(argparse.Namespace(**copy.deepcopy(config)))
    return model.eval()


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config()


@pytest.fixture(scope="module")
def model(config) -> torch.nn.Module:
    return build(config)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> torch.Tensor:
    """~2 s of speech from espeak-ng if installed, else tones + noise."""
    espeak = shutil.which("espeak-ng") or ("/usr/bin/espeak-ng" if Path("/usr/bin/espeak-ng").exists() else None)
    if espeak:
        import soundfile as sf
        import soxr

        wav = tmp_path_factory.mktemp("tts") / "utt.wav"
        subprocess.run(
            [espeak, "-w", str(wav), "turn on the kitchen lights please"],
            check=True,
            capture_output=True,
        )
        samples, sr = sf.read(wav, dtype="float32")
        samples = soxr.resample(samples, sr, SR).astype(np.float32)
    else:
        rng = np.random.default_rng(0)
        t = np.arange(int(1.9 * SR)) / SR
        samples = (
            0.3 * np.sin(2 * np.pi * 220 * t)
            + 0.2 * np.sin(2 * np.pi * 1300 * t * (1 + 0.1 * t))
            + 0.02 * rng.standard_normal(t.size)
        ).astype(np.float32)
    return torch.from_numpy(samples)


def reference(model, audio: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        out, lens = model.encode(audio[None, :n], torch.tensor([n]))
    assert int(lens[0]) == out.size(1)
    return out


def stream_and_compare(model, audio, chunk, checkpoints=3, **options) -> float:
    """Feed ``audio`` in ``chunk``-sized pieces, compare ``encode()`` at
    ~``checkpoints`` points and at ``finish()``; return the worst max abs diff."""
    inc = IncrementalEncoder(model, IncrementalOptions(**options))
    chunk = chunk or audio.numel()
    starts = list(range(0, audio.numel(), chunk))
    check_at = set(starts[:: max(len(starts) // checkpoints, 1)][1:])
    worst = 0.0
    for start in starts:
        if start in check_at:
            out, lens = inc.encode()
            ref = reference(model, audio, start)
            assert out.shape == ref.shape and int(lens[0]) == ref.size(1)
            worst = max(worst, (out - ref).abs().max().item())
        inc.feed(audio[start : start + chunk].numpy())
    out, _ = inc.finish()
    ref = reference(model, audio, audio.numel())
    assert out.shape == ref.shape
    return max(worst, (out - ref).abs().max().item())


# -- registration and ESPnet integration ---------------------------------------


def test_register_is_idempotent_and_builds_from_yaml(model):
    pasu.encoders.register()
    pasu.encoders.register()
    assert encoder_choices.get_class("late_context") is LateContextEncoder
    assert list(encoder_choices.classes).count("late_context") == 1
    assert "late_context" in encoder_choices.choices()
    assert isinstance(model.encoder, LateContextEncoder)
    assert len(model.encoder.local_blocks) == 3
    assert len(model.encoder.attention_blocks) == 2


def test_training_step_runs(config):
    model = build(config).train()
    speech = torch.randn(2, 8000) * 0.1
    lengths = torch.tensor([8000, 6000])
    text = torch.tensor([[4, 5, 6], [7, 8, 0]])
    text_lengths = torch.tensor([3, 2])
    loss, stats, _ = model(speech, lengths, text, text_lengths)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.encoder.local_blocks[0].conv_module.depthwise_conv.weight.grad is not None


def test_padded_batch_equals_single_utterances(model):
    """Masks keep padding out of the local convs: batch == one by one."""
    enc = model.encoder
    torch.manual_seed(1)
    feats = torch.randn(2, 120, 80)
    ilens = torch.tensor([120, 77])
    with torch.no_grad():
        batch, olens, _ = enc(feats, ilens)
        for i in range(2):
            single, slens, _ = enc(feats[i : i + 1, : ilens[i]], ilens[i : i + 1])
            assert int(olens[i]) == int(slens[0])
            diff = (batch[i, : olens[i]] - single[0]).abs().max().item()
            assert diff < TOL


# -- exactness of the incremental runner ---------------------------------------


@pytest.mark.parametrize("chunk", CHUNKS)
def test_incremental_equals_whole_utterance(model, audio, chunk):
    assert IncrementalEncoder(model).mode == "incremental"
    assert stream_and_compare(model, audio, chunk) < TOL


@pytest.mark.parametrize(
    "frontend_conf, encoder_conf",
    [
        ({}, {"local_right_context": 0}),  # ESPnet default STFT (512/128), causal
        ({"n_fft": 400, "hop_length": 160}, {"input_layer": "conv2d6"}),
        ({}, {"normalize_before": False, "pos_enc_layer_type": "abs_pos"}),
        ({}, {"num_local_blocks": 0}),
    ],
)
def test_incremental_variants(config, audio, frontend_conf, encoder_conf):
    config = copy.deepcopy(config)
    if frontend_conf:
        config["frontend_conf"] = {"fs": SR, "n_mels": 80, **frontend_conf}
    else:
        config["frontend_conf"] = {"fs": SR}
    config["encoder_conf"].update(encoder_conf)
    model = build(config, seed=3)
    assert stream_and_compare(model, audio, 1000, checkpoints=2) < TOL


def test_global_mvn_streams(config, audio, tmp_path):
    model = build(config)
    with torch.no_grad():
        feats, _ = model.frontend(audio[None], torch.tensor([audio.numel()]))
    feats = feats[0].double().numpy()
    stats = tmp_path / "feats_stats.npz"
    np.savez(
        stats,
        count=feats.shape[0],
        sum=feats.sum(0),
        sum_square=(feats**2).sum(0),
    )
    config = copy.deepcopy(config)
    config["normalize"] = "global_mvn"
    config["normalize_conf"] = {"stats_file": str(stats)}
    model = build(config)
    assert IncrementalEncoder(model).mode == "incremental"
    assert stream_and_compare(model, audio, 4000) < TOL


def test_utterance_mvn_falls_back_or_raises(config, audio):
    config = copy.deepcopy(config)
    config["normalize"] = "utterance_mvn"
    model = build(config)
    with pytest.raises(NotIncrementalError, match="UtteranceMVN"):
        IncrementalEncoder(model, IncrementalOptions(fallback=False))
    assert IncrementalEncoder(model).mode == "full"
    assert stream_and_compare(model, audio, 7777, checkpoints=2) < TOL


def test_stock_conformer_falls_back(config, audio):
    config = copy.deepcopy(config)
    config["encoder"] = "conformer"
    config["encoder_conf"] = dict(
        output_size=64,
        attention_heads=4,
        linear_units=128,
        num_blocks=2,
        cnn_module_kernel=15,
        input_layer="conv2d",
        rel_pos_type="latest",
        macaron_style=True,
    )
    model = build(config)
    assert IncrementalEncoder(model).mode == "full"
    assert stream_and_compare(model, audio, 4000, checkpoints=2) < TOL


# -- the work is incremental -----------------------------------------------------


class FrameCounter:
    """Counts frames through a module's forward (by time axis of input 0)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.frames = 0
        self.calls = 0
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        x = inputs[0][0] if isinstance(inputs[0], tuple) else inputs[0]
        self.frames += x.size(1)
        self.calls += 1


def test_feed_work_is_linear_and_encode_only_runs_the_tail(config, audio):
    model = build(config)
    n_feats = reference_feature_frames(model, audio)
    blocks = model.encoder.local_blocks
    local = [FrameCounter(b.feed_forward_macaron) for b in blocks]
    attention = FrameCounter(model.encoder.attention_blocks[0])
    frontend = FrameCounter(model.frontend.logmel)
    inc = IncrementalEncoder(model)
    # What encode() may recompute per block: frames still waiting for right
    # context in this and lower blocks, plus a few subsampling/STFT tail frames.
    max_tail = sum(b.right_context for b in blocks) + 4
    for start in range(0, audio.numel(), 160):
        calls = attention.calls
        inc.feed(audio[start : start + 160])
        assert attention.calls == calls  # feed never runs the attention blocks
        if start % 3200 == 0:
            before = [c.frames for c in local]
            inc.encode()
            assert all(c.frames - b <= max_tail for c, b in zip(local, before, strict=True))
    out, _ = inc.finish()
    frames = out.size(1)
    # each frame went through each local block's feed path exactly once
    for i, (pushed, peeked) in enumerate(
        zip(inc.stats.local_frames_pushed, inc.stats.local_frames_peeked, strict=True)
    ):
        assert pushed + peeked == frames
        assert peeked <= sum(b.right_context for b in blocks[: i + 1]) + 4
    # total work: every frame once, plus only tails at the encode() calls
    n_encodes = inc.stats.encodes
    assert all(frames <= c.frames <= frames + n_encodes * max_tail for c in local)
    assert n_feats <= frontend.frames <= n_feats + n_encodes * 4


def reference_feature_frames(model, audio) -> int:
    with torch.no_grad():
        feats, _ = model.frontend(audio[None], torch.tensor([audio.numel()]))
    return feats.size(1)


# -- edges ---------------------------------------------------------------------


def test_too_short_returns_empty_then_grows(model, audio):
    inc = IncrementalEncoder(model)
    inc.feed(audio[:100])
    out, lens = inc.encode()
    assert out.shape == (1, 0, 64) and int(lens[0]) == 0
    with pytest.raises((TooShortUttError, RuntimeError)):
        reference(model, audio, 100)
    inc.feed(audio[100:1500])
    out, _ = inc.encode()
    assert (out - reference(model, audio, 1500)).abs().max().item() < TOL


def test_finish_then_reset(model, audio):
    inc = IncrementalEncoder(model)
    inc.feed(audio[:8000])
    first, _ = inc.finish()
    assert torch.equal(inc.encode()[0], first)  # cached, no recompute
    with pytest.raises(RuntimeError):
        inc.feed(audio[8000:9000])
    inc.reset()
    inc.feed(audio[:8000])
    assert torch.equal(inc.finish()[0], first)


def test_train_mode_model_is_rejected(config):
    with pytest.raises(ValueError, match="eval"):
        IncrementalEncoder(build(config).train())
