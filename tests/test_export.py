"""`pasu export`: every graph run with onnxruntime equals the torch module it came from.

On the shipped device model and on a tiny late-context model, with real audio:
the front end, the subsampling, the local blocks threaded over several chunks
(their caches as state), the attention blocks, the CTC head, the decoder's source
projection and its steps with a key/value cache, and the confidence estimator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pasu.audio import read_audio
from pasu.decoding.interface import EncoderBatch
from pasu.decoding.kv_decoder import KVCacheDecoderSession
from pasu.encoders import IncrementalEncoder
from pasu.lite import LiteDecoder, LiteEncoder, LiteModel, LiteModelError, LiteOptions, greedy_ctc
from pasu.lite.frames import FrameStage
from pasu.models import load_model
from pasu.resources import AUDIO_DIR, MODELS
from pasu.tools.export import ExportOptions, UnsupportedModelError, export_model

pytestmark = pytest.mark.slow  # each export takes tens of seconds on the shared CPU

TOL = 1e-4
DEVICE = MODELS / "device"
CLIPS = ("cmd03", "cmd11")


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dirs, tmp_path_factory) -> Path:
    """Through the CLI, with the ORT-format copies."""
    from pasu.cli import main

    out = tmp_path_factory.mktemp("tiny-onnx")
    assert main(["export", "--model", str(tiny_model_dirs["late"]), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def pairs(device_export, tiny_export, tiny_model_dirs):
    """name -> (loaded torch model, export dir)."""
    return {
        "device": (load_model(DEVICE), device_export),
        "tiny": (load_model(tiny_model_dirs["late"]), tiny_export),
    }


def _chunks(audio: np.ndarray, seed: int) -> list[np.ndarray]:
    """Random chunk sizes, from a few samples (no new frame) to 0.4 s."""
    rng = np.random.default_rng(seed)
    out, pos = [], 0
    while pos < audio.size:
        n = int(rng.choice([37, 160, 1000, 2560, 6400]))
        out.append(audio[pos : pos + n])
        pos += n
    return out


def _max_diff(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


def test_manifest_checker_and_checksums(device_export):
    manifest = json.loads((device_export / "manifest.json").read_text())
    assert manifest["format"] == "pasu-onnx/1" and manifest["int8"] is False
    assert set(manifest["versions"]) == {"pasu", "torch", "onnx", "onnxruntime"}
    assert manifest["tokens"] == (DEVICE / "tokens.txt").read_text().split()
    assert set(manifest["graphs"]) == {
        "frontend",
        "subsampling",
        "local_blocks",
        "attention",
        "ctc",
        "decoder_source",
        "decoder_step",
        "confidence",
    }
    for graph in manifest["graphs"].values():
        onnx.checker.check_model(onnx.load(str(device_export / graph["file"])), full_check=True)
    assert manifest["graphs"]["local_blocks"]["inputs"][3]["shape"] == [4, 1, 14, 144]  # gates: (B, 1, K-1, D)
    LiteModel(device_export)  # verifies every checksum
    broken = device_export / "ctc.onnx"
    data = broken.read_bytes()
    try:
        broken.write_bytes(data + b"\0")
        with pytest.raises(LiteModelError, match="checksum"):
            LiteModel(device_export)
    finally:
        broken.write_bytes(data)


@pytest.mark.parametrize("name", ["device", "tiny"])
def test_frontend_graph_equals_espnet(pairs, name):
    loaded, out = pairs[name]
    model = loaded.model
    lite = LiteModel(out)
    fe = lite.manifest["frontend"]
    for clip in CLIPS:
        audio = read_audio(AUDIO_DIR / f"{clip}.flac")
        stage = FrameStage(fe["n_fft"], fe["hop_length"], fe["center"])
        windows = np.concatenate([*(stage.push(c) for c in _chunks(audio, 1)), stage.peek()])
        feats = lite.run("frontend", frames=windows)[0]
        with torch.no_grad():
            ref, lens = model.frontend(torch.tensor(audio)[None], torch.tensor([audio.size]))
            ref, _ = model.normalize(ref, lens)
        # relative too: the tiny model's synthetic MVN statistics put real speech near -100
        np.testing.assert_allclose(feats, ref[0].numpy(), rtol=1e-5, atol=TOL)


@pytest.mark.parametrize("name", ["device", "tiny"])
def test_graphs_equal_torch_modules(pairs, name):
    """Each encoder graph against its torch module, the local blocks' state over several chunks."""
    loaded, out = pairs[name]
    enc = loaded.model.encoder
    lite = LiteModel(out)
    audio = read_audio(AUDIO_DIR / "cmd11.flac")
    with torch.no_grad():
        feats, lens = loaded.model._extract_feats(torch.tensor(audio)[None], torch.tensor([audio.size]))
        feats, _ = loaded.model.normalize(feats, lens)
        masks = torch.ones(1, 1, feats.size(1), dtype=torch.bool)
        x, masks = enc.forward_embed(feats, masks)
        local = enc.forward_local(x, masks)
        ref = enc.forward_attention(local, masks)
    assert _max_diff(x[0], lite.run("subsampling", feats=feats.numpy())[0][0]) < TOL

    # the local blocks over chunks of 1, 5, 7, ... frames, then the flush with zero frames
    m = lite.manifest["encoder"]
    blocks, delay = m["local_blocks"], m["local_blocks"] * m["right_context"]
    gates = np.zeros((blocks, 1, m["kernel"] - 1, m["d_model"]), np.float32)
    residual = np.zeros((blocks, 1, m["residual_frames"], m["d_model"]), np.float32)
    xs = np.concatenate([x[0].numpy(), np.zeros((delay, m["d_model"]), np.float32)])
    total, offset, outs = x.size(1), 0, []
    for size in [1, 5, 7, 3, 11, *([4] * 1000)]:
        if offset >= xs.shape[0]:
            break
        chunk = xs[offset : offset + size]
        y, gates, residual = lite.run(
            "local_blocks",
            x=chunk[None],
            offset=np.array([offset], np.int64),
            limit=np.array([total], np.int64),
            gates=gates,
            residual=residual,
        )
        outs.append(y[0])
        offset += chunk.shape[0]
    streamed = np.concatenate(outs)[delay:]
    assert _max_diff(local[0], streamed) < TOL

    enc_out = lite.run("attention", x=local.numpy())[0][0]
    assert _max_diff(ref[0], enc_out) < TOL
    with torch.no_grad():
        ctc_ref = loaded.model.ctc.log_softmax(ref)
    assert _max_diff(ctc_ref[0], lite.run("ctc", enc=ref.numpy())[0][0]) < TOL


@pytest.mark.parametrize("name", ["device", "tiny"])
def test_lite_encoder_streams_like_torch(pairs, name):
    """pasu.lite's encoder after every chunk equals IncrementalEncoder; CTC greedy tokens equal."""
    loaded, out = pairs[name]
    lite = LiteEncoder(LiteModel(out))
    for i, clip in enumerate(CLIPS):
        audio = read_audio(AUDIO_DIR / f"{clip}.flac")
        torch_enc = IncrementalEncoder(loaded.model)
        lite.reset()
        worst, checked = 0.0, 0
        for chunk in _chunks(audio, i):
            torch_enc.feed(chunk)
            lite.feed(chunk)
            ref = torch_enc.encode()[0][0]
            got = lite.encode()
            worst = max(worst, _max_diff(ref, got))
            checked += got.shape[0] > 0
        assert checked >= 5 and worst < TOL
        with torch.no_grad():
            whole = loaded.model.encode(torch.tensor(audio)[None], torch.tensor([audio.size]))[0][0]
            ref_logp = loaded.model.ctc.log_softmax(whole[None])[0]
        assert _max_diff(whole, got) < TOL
        logp = lite.ctc_log_probs(got)
        assert _max_diff(ref_logp, logp) < TOL
        assert greedy_ctc(logp) == greedy_ctc(ref_logp.numpy())


@pytest.mark.parametrize("name", ["device", "tiny"])
def test_decoder_step_equals_kv_decoder(pairs, name):
    """Several steps over three hypotheses, rows reordered between steps, as a beam search does."""
    loaded, out = pairs[name]
    lite = LiteModel(out)
    encoder = LiteEncoder(lite)
    encoder.feed(read_audio(AUDIO_DIR / "cmd03.flac"))
    enc = encoder.encode()
    decoder = LiteDecoder(lite)
    state = decoder.begin(enc, rows=3)
    with torch.inference_mode():
        session = KVCacheDecoderSession(
            loaded.model.decoder, EncoderBatch(torch.tensor(enc)[None], torch.tensor([len(enc)]))
        )
        for i, (k, ref) in enumerate(session.src):
            assert _max_diff(k, state.src_k[i]) < TOL and _max_diff(ref, state.src_v[i]) < TOL
        yseq = torch.full((3, 1), loaded.sos)
        rows = torch.zeros(3, dtype=torch.long)
        for step in range(6):
            ref = session.score(yseq, rows, None)
            logp, state = decoder.step(state, yseq[:, -1].numpy(), yseq.size(1) - 1)
            assert _max_diff(ref, logp) < TOL
            parents = torch.tensor([0, 0, 2]) if step % 2 else torch.tensor([1, 0, 2])
            tokens = ref[parents].topk(2, dim=-1).indices[torch.arange(3), torch.tensor([0, 1, 0])]
            session.advance(parents, tokens)
            state = state.reorder(parents.numpy())
            yseq = torch.cat([yseq[parents], tokens[:, None]], 1)


def test_confidence_graph_equals_estimator(pairs):
    from pasu.device.confidence import FEATURES, ConfidenceEstimator

    estimator = ConfidenceEstimator.load(DEVICE / "confidence.pt")
    lite = LiteModel(pairs["device"][1])
    X = np.random.default_rng(0).normal(size=(16, len(FEATURES))).astype(np.float32)
    assert _max_diff(estimator.predict_many(X), lite.run("confidence", features=X)[0]) < 1e-6


def test_ort_copies_run_the_same(pairs):
    loaded, out = pairs["tiny"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert all((out / g["ort"]).is_file() for g in manifest["graphs"].values())
    audio = read_audio(AUDIO_DIR / "cmd03.flac")
    a, b = LiteEncoder(LiteModel(out)), LiteEncoder(LiteModel(out, LiteOptions(prefer_ort=True)))
    a.feed(audio)
    b.feed(audio)
    assert b.model.session("attention")._model_path.endswith(".ort")  # type: ignore[attr-defined]
    assert _max_diff(a.encode(), b.encode()) < 1e-5


def test_int8_export_is_quantized(tiny_model_dirs, pairs, tmp_path):
    out = tmp_path / "int8"
    manifest = json.loads(export_model(tiny_model_dirs["late"], out, ExportOptions(int8=True, ort=False)).read_text())
    assert manifest["int8"] is True
    ops = {n.op_type for n in onnx.load(str(out / "attention.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops
    assert "MatMulInteger" not in {n.op_type for n in onnx.load(str(out / "frontend.onnx")).graph.node}
    audio = read_audio(AUDIO_DIR / "cmd03.flac")
    q, f = LiteEncoder(LiteModel(out)), LiteEncoder(LiteModel(pairs["tiny"][1]))
    q.feed(audio)
    f.feed(audio)
    eq, ef = q.encode(), f.encode()
    assert eq.shape == ef.shape and np.isfinite(eq).all() and 0 < _max_diff(eq, ef) < 1.0
    assert (out / "attention.onnx").stat().st_size < (pairs["tiny"][1] / "attention.onnx").stat().st_size


def test_unsupported_model_is_refused(tiny_model_dirs, tmp_path):
    with pytest.raises(UnsupportedModelError, match="ConformerEncoder has no local blocks"):
        export_model(tiny_model_dirs["conformer"], tmp_path / "x", ExportOptions(ort=False))
    from pasu.cli import main

    with pytest.raises(SystemExit, match="cannot export with streaming state"):
        main(["export", "--model", str(tiny_model_dirs["conformer"]), "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists()
