"""Device agent pieces with no model: VAD, calibration metrics, policies, estimator files, config, output."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from pasu.device.calibration import auroc, ece, reliability_diagram
from pasu.device.confidence import FEATURES, SEQ_LEN, ConfidenceEstimator, ConfidenceNet, pad_sequence
from pasu.device.config import AgentConfig, CloudClientConfig, PolicyConfig, VadOptions
from pasu.device.output import intent_of
from pasu.device.policy import DecisionContext, OffloadPolicy
from pasu.device.vad import segment_audio

pytestmark = pytest.mark.timeout(60)


# -- VAD -----------------------------------------------------------------------
def test_vad_splits_three_clips_with_silences(audio):
    keys = sorted(audio)[:3]
    rng = np.random.default_rng(0)
    silence = np.zeros(16000, np.float32)
    parts = [silence]
    for k in keys:
        parts += [audio[k], silence]
    stream = np.concatenate(parts)
    stream = stream + rng.normal(0, 0.001, stream.size).astype(np.float32)  # a quiet room
    segs = segment_audio(stream)
    assert len(segs) == 3
    starts = np.cumsum([0] + [16000 + audio[k].size for k in keys])[:3] + 16000
    for seg, start, k in zip(segs, starts, keys, strict=True):
        # each segment lies within its clip (plus padding) and covers most of it
        assert start - 4000 <= seg.start and seg.end <= start + audio[k].size + 4000
        assert seg.end - seg.start >= 0.6 * audio[k].size
        assert seg.audio.size == seg.end - seg.start


def test_vad_bundled_clips_are_one_segment_each(audio):
    for k, a in audio.items():
        segs = segment_audio(a)
        assert len(segs) == 1, (k, [(s.start, s.end) for s in segs])


def test_vad_cuts_long_speech_and_loses_nothing(audio):
    a = np.concatenate([audio[k] for k in sorted(audio)[:2]])
    segs = segment_audio(a, VadOptions(max_segment_s=1.0))
    assert len(segs) >= 3 and any(s.cut for s in segs)
    assert all(s.end - s.start <= 16000 + 480 for s in segs)
    for prev, nxt in itertools.pairwise(segs):
        if prev.cut:
            assert nxt.start == prev.end  # speech goes on in the next segment


def test_vad_options_are_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        VadOptions().padding_ms = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="frame_ms"):
        VadOptions(frame_ms=25)
    with pytest.raises(ValueError, match="aggressiveness"):
        VadOptions(aggressiveness=5)


# -- calibration -----------------------------------------------------------------
def test_calibration_metrics():
    y = np.array([1, 1, 0, 0])
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    assert auroc(np.array([0.5, 0.6]), np.array([1, 1])) is None
    assert ece(np.array([1.0, 1.0, 0.0, 0.0]), y) == 0.0
    assert ece(np.array([0.75] * 4), y) == pytest.approx(0.25)


def test_reliability_diagram_png(tmp_path):
    p = np.random.default_rng(0).random(50)
    y = (np.random.default_rng(1).random(50) < p).astype(float)
    out = reliability_diagram(p, y, tmp_path / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- confidence estimator --------------------------------------------------------
@pytest.mark.parametrize("kind", ["logistic", "mlp", "cnn"])
def test_estimator_round_trip_weights_only(tmp_path, kind):
    torch.manual_seed(0)
    est = ConfidenceEstimator(ConfidenceNet(kind))
    x = np.random.default_rng(0).normal(size=len(FEATURES)).astype(np.float32)
    seq = pad_sequence([x, x * 0.5])
    assert seq.shape == (SEQ_LEN, len(FEATURES)) and not seq[0].any()
    p1 = est.predict(x, seq)
    weights, meta = est.save(tmp_path / "c.pt")
    assert meta.name == "c.pt.json"
    torch.load(weights, weights_only=True)  # plain tensors only
    back = ConfidenceEstimator.load(weights)
    assert back.net.kind == kind
    assert back.predict(x, seq) == pytest.approx(p1, abs=1e-6)


@pytest.mark.parametrize("kind", ["logistic", "mlp", "cnn"])
def test_estimator_ignores_the_features_it_does_not_use(tmp_path, kind):
    from pasu.device.confidence import SCORE_FEATURES

    torch.manual_seed(0)
    est = ConfidenceEstimator(ConfidenceNet(kind, uses=SCORE_FEATURES))
    x = np.random.default_rng(0).normal(size=len(FEATURES)).astype(np.float32)
    other = x.copy()
    for i, f in enumerate(FEATURES):
        if f not in SCORE_FEATURES:
            other[i] += 5.0  # lengths, pilot counts, agreement: whatever they say
    p = est.predict(x, pad_sequence([x]))
    assert est.predict(other, pad_sequence([other])) == pytest.approx(p, abs=1e-6)
    score = FEATURES.index("score_per_token")
    moved = x.copy()
    moved[score] += 5.0
    assert est.predict(moved, pad_sequence([moved])) != pytest.approx(p, abs=1e-6)
    est.save(tmp_path / "c.pt")
    back = ConfidenceEstimator.load(tmp_path / "c.pt")
    assert back.net.uses == SCORE_FEATURES
    assert back.predict(other, pad_sequence([other])) == pytest.approx(p, abs=1e-6)
    with pytest.raises(ValueError, match="features to use"):
        ConfidenceNet(kind, uses=("score_per_token", "nope"))


def test_estimator_saved_before_feature_selection_loads_with_every_feature(tmp_path):
    est = ConfidenceEstimator(ConfidenceNet("mlp"))
    est.save(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    del state["mask"]  # the v3 files have no mask
    torch.save(state, tmp_path / "c.pt")
    assert ConfidenceEstimator.load(tmp_path / "c.pt").net.mask.tolist() == [1.0] * len(FEATURES)


def test_estimator_from_weights_and_prior():
    est = ConfidenceEstimator.from_weights({"audio_s": 2.0}, bias=-4.0)
    x = np.zeros(len(FEATURES), np.float32)
    x[FEATURES.index("audio_s")] = 2.0
    assert est.predict(x) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown"):
        ConfidenceEstimator.from_weights({"nope": 1.0}, 0.0)
    prior = ConfidenceEstimator.prior()
    assert 0.0 <= prior.predict(x) <= 1.0


# -- policies ------------------------------------------------------------------
def ctx(stage, conf, audio_s=1.0, pilots=3):
    return DecisionContext(stage, conf, audio_s, pilots)


def test_policy_never_always_threshold():
    assert not OffloadPolicy(PolicyConfig("never")).decide(ctx("final", 0.0)).offload
    d = OffloadPolicy(PolicyConfig("always")).decide(ctx("start", None, 0.0, 0))
    assert d.offload and d.reason == "policy_always"
    t = OffloadPolicy(PolicyConfig("threshold", threshold=0.5, min_pilots=2))
    assert not t.decide(ctx("start", None)).offload
    assert not t.decide(ctx("pilot", 0.1, pilots=1)).offload  # too early to trust the estimator
    assert t.decide(ctx("pilot", 0.1, pilots=2)).reason == "low_confidence"
    assert not t.decide(ctx("final", 0.9)).offload
    late = OffloadPolicy(PolicyConfig("threshold", early=False))
    assert not late.decide(ctx("pilot", 0.0, pilots=9)).offload
    assert late.decide(ctx("final", 0.0)).offload


def test_policy_budget_tracks_target_rate():
    pol = OffloadPolicy(PolicyConfig("budget", threshold=0.5, target_rate=0.2, budget_gain=0.05))
    confs = np.random.default_rng(0).random(2000)
    for c in confs:
        pol.segment_done(pol.decide(ctx("final", float(c))).offload)
    assert pol.offload_rate == pytest.approx(0.2, abs=0.03)
    assert pol.threshold == pytest.approx(0.2, abs=0.1)  # uniform confidences: threshold ≈ rate


def test_policy_latency_weighs_link_against_local_work():
    pol = OffloadPolicy(
        PolicyConfig("latency", threshold=0.5, prior_rtt_s=0.05, prior_cloud_s=0.1, prior_local_rtf=0.5)
    )
    assert pol.decide(ctx("final", 0.1, audio_s=2.0)).reason == "latency"  # cloud 0.15 s < local 1 s
    assert not pol.decide(ctx("final", 0.9, audio_s=2.0)).offload  # confident: stays
    assert not pol.decide(ctx("final", 0.1, audio_s=0.2)).offload  # local 0.1 s beats the cloud
    for _ in range(20):  # the link turns out slow
        pol.link.observe_call(wait_s=3.0, server_s=0.5, tail_bytes=3200)
    assert not pol.decide(ctx("final", 0.1, audio_s=2.0)).offload


# -- config and output ---------------------------------------------------------
def test_configs_validate():
    with pytest.raises(ValueError, match="policy"):
        PolicyConfig(kind="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client_cert"):
        CloudClientConfig(client_cert="c.pem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        AgentConfig(device="tpu")
    assert "secret" not in repr(CloudClientConfig(bearer_token="secret"))


def test_intent_of():
    assert intent_of("alarm_set wake me up") == "alarm_set"
    assert intent_of("iot_hue_lightoff turn off") == "iot_hue_lightoff"
    assert intent_of("wake me up") is None
    assert intent_of("") is None


def test_features_flag_names_sets_or_lists_and_refuses_unknown_ones():
    import argparse

    from pasu.device.cli import _feature_set
    from pasu.device.confidence import SCORE_FEATURES

    assert _feature_set("all") == FEATURES and _feature_set("scores") == SCORE_FEATURES
    assert _feature_set("audio_s, n_tokens") == ("audio_s", "n_tokens")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown features \\['loudness'\\]"):
        _feature_set("audio_s,loudness")
