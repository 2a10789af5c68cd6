"""pasu's one beam search and streaming session on the exported device model (onnxruntime + numpy).

:class:`pasu.lite.recognizer.LiteRecognizer` against the torch
:class:`pasu.decoding.recognizer.Recognizer` on shipped clips: the same n-best token ids
(scores within 1e-3) whole-utterance and streaming, with the same techniques firing; the
numpy CTC prefix session against the torch one step by step; and a subprocess with torch
and ESPnet unimportable that streams a clip through a LiteRecognizer session.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from typing import Any, cast

import numpy as np
import pytest
import torch

from pasu.audio import read_audio
from pasu.decoding.ctc import CTCPrefixScorer as TorchCTCScorer
from pasu.decoding.ctc_prefix import CTCPrefixSession
from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer
from pasu.lite import LiteModel, LiteModelError
from pasu.lite.recognizer import LiteRecognizer, detokenizer, sentencepiece_text
from pasu.lite.scorers import LiteDecoderScorer, PrefixPass
from pasu.models import load_model
from pasu.resources import AUDIO_DIR, MODELS
from pasu.streaming import StreamingSession
from pasu.streaming.ctc_leap import PrefixForwardCache
from pasu.streaming.options import StreamingOptions

DEVICE = MODELS / "device"
CLIPS = ("cmd00", "cmd03", "cmd07", "cmd11", "cmd15", "cmd20")
SCORE_TOL = 1e-3
BLOCKED = ("torch", "torchaudio", "espnet", "espnet2")


@pytest.fixture(scope="module")
def loaded():
    return load_model(DEVICE)


@pytest.fixture(scope="module")
def audio() -> dict[str, np.ndarray]:
    return {c: read_audio(AUDIO_DIR / f"{c}.flac") for c in CLIPS}


class CountingModel(LiteModel):
    """The real exported model, counting graph calls (to show which work a hint saved)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[str, int] = {}

    def run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        self.calls[graph] = self.calls.get(graph, 0) + 1
        return super().run(graph, **inputs)


def _same_nbest(ref, got) -> None:
    assert [e.token_ids for e in got] == [e.token_ids for e in ref]
    assert [e.yseq for e in got] == [e.yseq for e in ref]
    assert [e.text for e in got] == [e.text for e in ref]
    for r, g in zip(ref, got, strict=True):
        assert abs(r.score - g.score) < SCORE_TOL
        assert r.scores.keys() == g.scores.keys()
        assert all(abs(r.scores[k] - g.scores[k]) < SCORE_TOL for k in r.scores)


# -- no export needed --------------------------------------------------------------------
@pytest.mark.parametrize("recursion", ["scan", "loop"])
def test_ctc_session_on_numpy_equals_torch_step_by_step(loaded, audio, recursion):
    """The one CTC prefix session on numpy arrays against itself on torch tensors.
    Two real utterances padded into one batch; rows pruned, duplicated and repeating their
    last token between steps, as a search does; then a seeded start from a PrefixForward."""
    asr: Any = loaded.model
    batch = Recognizer(loaded).encode([audio["cmd03"], audio["cmd11"]])
    assert batch.padded
    torch_scorer = TorchCTCScorer(asr.ctc, eos=loaded.eos, recursion=recursion)
    with torch.inference_mode():
        logp_t = torch_scorer.log_probs(batch)
    logp = logp_t.numpy().copy()
    lengths = batch.lengths.numpy()
    utt = np.array([0, 1])
    ref = CTCPrefixSession(logp_t.clone(), batch.lengths, torch.tensor(utt), loaded.eos, 0, recursion)
    got = CTCPrefixSession(logp, lengths, utt, loaded.eos, 0, recursion)
    said = logp.max(1)  # (B, V): each token's best frame; neither blank nor <eos> is a candidate
    said[:, [0, loaded.eos]] = -np.inf
    rng = np.random.default_rng(0)
    yseq = np.full((2, 1), loaded.sos)
    worst, compared = 0.0, 0
    for _ in range(10):
        n = yseq.shape[0]
        top = np.argsort(-said[got.row_utt], axis=1)[:, :15]  # tokens the clips do say
        cand = np.stack([rng.permutation(top[i])[:8] for i in range(n)])
        a = ref.score(torch.tensor(yseq), torch.tensor(got.row_utt), torch.tensor(cand)).numpy()
        b = got.score(yseq, got.row_utt, cand)
        assert b.dtype == np.float32 and b.shape == a.shape
        real = a > -1e9
        np.testing.assert_array_equal(real, b > -1e9)
        worst = max(worst, float(np.abs(a[real] - b[real]).max()))
        compared += int(real.sum())
        parents = rng.integers(0, n, 4)
        tokens = cand[parents, rng.integers(0, 8, 4)]
        tokens[0] = yseq[parents[0], -1]  # a repeated label: must pass through a blank
        ref.advance(torch.tensor(parents), torch.tensor(tokens))
        got.advance(parents, tokens)
        r_ref = ref.r.numpy()
        np.testing.assert_array_equal(r_ref > -1e9, got.r > -1e9)
        worst = max(worst, float(np.abs(r_ref - got.r)[r_ref > -1e9].max()))
        yseq = np.concatenate([yseq[parents], tokens[:, None]], 1)
    assert compared > 500 and worst < 1e-3, worst

    # a seeded start (CTC leap's hint) gives the same scores on both
    n0 = int(lengths[0])
    one = logp[:1, :n0]
    prefix = [t for t in _best_path(one[0]) if t != loaded.eos][:3]
    hint = PrefixForwardCache().update(prefix, one[0])
    seed = np.array([[loaded.sos, *prefix]] * 2)
    rows = np.zeros(2, np.int64)
    ref = CTCPrefixSession(torch.tensor(one), torch.tensor([n0]), torch.tensor(rows), loaded.eos, 0, recursion)
    got = CTCPrefixSession(one, np.array([n0]), rows, loaded.eos, 0, recursion)
    np.testing.assert_allclose(got.prime(seed, rows, hint), ref.prime(torch.tensor(seed), None, hint).numpy())
    cand = np.argsort(-said[:1], axis=1)[:, :8].repeat(2, 0)
    a = ref.score(torch.tensor(seed), None, torch.tensor(cand)).numpy()
    b = got.score(seed, rows, cand)
    assert len(prefix) == 3 and float(np.abs(a - b).max()) < 1e-3


def _best_path(logp: np.ndarray) -> list[int]:
    best = logp.argmax(-1).tolist()
    return [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]


def test_sentencepiece_text_equals_sentencepiece():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(DEVICE / "bpe.model"))
    pool = (DEVICE / "tokens.txt").read_text().split()[1:-1]  # without <blank> and <sos/eos>
    rng = random.Random(0)
    for _ in range(3000):
        seq = [rng.choice(pool) for _ in range(rng.randint(0, 8))]
        if rng.random() < 0.3:
            seq = ["\u2581"] * rng.randint(1, 3) + seq
        assert sentencepiece_text(seq) == sp.DecodePieces(seq), seq
    assert "<unk>" in pool and sentencepiece_text(["<unk>", "\u2581on"]) == sp.DecodePieces(["<unk>", "\u2581on"])
    with pytest.raises(LiteModelError, match="re-export"):
        detokenizer({})
    with pytest.raises(LiteModelError, match="phn"):
        detokenizer({"token_type": "phn"})


# -- the exported model ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(),
        DecodingOptions(nbest=3, ctc_weight=0.3, penalty=0.5, beam_size=6),
        DecodingOptions(ctc_weight=1.0, maxlenratio=0.3, ctc_recursion="loop"),  # CTC scores every token
    ],
    ids=["default", "nbest3", "ctc_only"],
)
def test_decode_equals_torch(loaded, device_export, audio, options):
    rec = Recognizer(loaded, options)
    lite = LiteRecognizer(LiteModel(device_export), options)
    for clip in CLIPS[:4]:
        ref = rec.recognize([audio[clip]])[0]
        got = lite.recognize([audio[clip]])[0]
        assert len(ref) == options.nbest and len(ref[0].token_ids) > 3
        _same_nbest(ref, got)
    # a padded batch of two: per-utterance decoder calls, padded CTC frames
    pair = [audio["cmd03"], audio["cmd11"]]
    for r, g in zip(rec.recognize(pair), lite.recognize(pair), strict=True):
        _same_nbest(r, g)


@pytest.mark.slow
def test_seeded_decode_uses_the_prefix_pass(loaded, device_export, audio):
    """A search seeded with a prefix and the prefix pass's hint: the decoder is not stepped over
    the prefix again, and the n-best equals the torch search seeded the same way."""
    model = CountingModel(device_export)
    lite = LiteRecognizer(model)
    rec = Recognizer(loaded)
    a = audio["cmd07"]
    batch = lite.encode_audio(a)
    assert batch is not None
    prefix = lite.decode(batch)[0][0].token_ids[:4]
    ppass = lite.prefix_pass(batch, prefix)
    assert isinstance(ppass, PrefixPass) and ppass.logp.shape == (4, lite.vocab_size)

    # prime: from the hint (no decoder_step call) and by stepping give the same scores
    seed = np.array([[lite.sos, *prefix]])
    utt = np.zeros(1, np.int64)
    scorer = LiteDecoderScorer(lite.decoder)
    stepped = scorer.begin(batch, utt)
    steps = model.calls.get("decoder_step", 0)
    total_stepped = stepped.prime(seed, utt, None)
    assert model.calls["decoder_step"] - steps == len(prefix)  # one graph call per position
    before = dict(model.calls)
    hinted = scorer.begin(batch, utt)
    total_hinted = hinted.prime(seed, utt, ppass)
    assert model.calls == before  # neither decoder_step nor decoder_source ran
    np.testing.assert_allclose(total_hinted, total_stepped, atol=1e-4)
    np.testing.assert_allclose(hinted.score(seed, utt, None), stepped.score(seed, utt, None), atol=1e-4)
    assert float(total_stepped[0]) < 0

    t_batch = rec.encode_audio(a)
    assert t_batch is not None
    ref = rec.decode(t_batch, prefixes=[prefix], prime_hints={"decoder": rec.prefix_pass(t_batch, prefix)})[0]
    got = lite.decode(batch, prefixes=[prefix], prime_hints={"decoder": ppass})[0]
    _same_nbest(ref, got)
    # a hint for another encoder output is not taken: the prefix is stepped, same answer
    other = lite.encode_audio(a)
    assert other is not None and other.enc is not batch.enc
    _same_nbest(ref, lite.decode(other, prefixes=[prefix], prime_hints={"decoder": ppass})[0])


def _stream(recognizer, audio: np.ndarray, chunk: int = 1600):
    session = StreamingSession(recognizer, StreamingOptions())
    for start in range(0, audio.size, chunk):
        session.feed(audio[start : start + chunk])
    return session.finalize()


@pytest.mark.slow
def test_streaming_session_equals_torch(loaded, device_export, audio):
    rec = Recognizer(loaded)
    lite = LiteRecognizer(LiteModel(device_export))
    fired: dict[str, int] = {}
    for clip in CLIPS:
        ref = _stream(rec, audio[clip])
        got = _stream(lite, audio[clip])
        _same_nbest(ref.nbest, got.nbest)
        assert [p.nbest[0].token_ids for p in got.pilots] == [p.nbest[0].token_ids for p in ref.pilots]
        assert got.fired == ref.fired and got.prefix_len == ref.prefix_len
        assert got.features["ctc_attention_agreement"] == pytest.approx(ref.features["ctc_attention_agreement"])
        for k, v in got.fired.items():
            fired[k] = fired.get(k, 0) + v
    for technique in ("late_context", "pilots", "pilot_continuations", "beam_collapse", "ctc_leap"):
        assert fired[technique] > 0, (technique, fired)


SCRIPT = textwrap.dedent(
    """
    import json, sys
    for name in {blocked!r}:
        sys.modules[name] = None  # import name -> ImportError
    import numpy as np
    from pasu.lite import LiteModel
    from pasu.lite.recognizer import LiteRecognizer
    from pasu.streaming import StreamingSession, StreamingOptions

    export, audio_file, out = sys.argv[1:4]
    audio = np.load(audio_file)
    # inline pilots: the same as the reference's (a worker thread's depend on timing)
    session = StreamingSession(LiteRecognizer(LiteModel(export)), StreamingOptions(), background=False)
    for start in range(0, audio.size, 1600):  # 0.1 s chunks
        session.feed(audio[start : start + 1600])
    result = session.finalize()
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
    best = result.nbest[0]
    json.dump(
        {{"tokens": best.token_ids, "text": best.text, "fired": result.fired, "heavy_modules": heavy}},
        open(out, "w"),
    )
    """
).format(blocked=BLOCKED)


@pytest.mark.slow
def test_lite_streaming_session_without_torch(loaded, device_export, audio, tmp_path):
    np.save(tmp_path / "audio.npy", audio["cmd15"])
    script = tmp_path / "stream_lite.py"
    script.write_text(SCRIPT)
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(script), str(device_export), str(tmp_path / "audio.npy"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["heavy_modules"] == []
    ref = _stream(Recognizer(loaded), audio["cmd15"])
    assert result["tokens"] == ref.nbest[0].token_ids and result["text"] == ref.nbest[0].text
    assert result["fired"]["pilots"] > 0 and result["fired"]["beam_collapse"] == 1


@pytest.mark.slow
def test_bad_input_is_refused(device_export, loaded, audio):
    model = LiteModel(device_export)
    with pytest.raises(ValueError, match="no language model"):
        LiteRecognizer(model, DecodingOptions(lm_weight=0.3))
    lite = LiteRecognizer(model)
    with pytest.raises(TypeError, match="numpy encoder output"):
        lite.decode(cast(Any, Recognizer(loaded).encode([audio["cmd00"]])))
    with pytest.raises(ValueError, match="1-D audio"):
        lite.encode_audio(np.zeros((2, 100), np.float32))
    assert lite.encode_audio(np.zeros(300, np.float32)) is None  # too short for the subsampling
