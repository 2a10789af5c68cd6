"""pasu's beam search reproduces ESPnet's Speech2Text (BatchBeamSearch) exactly.

Same model, same settings: the n-best token sequences must be identical and
every score (total and per scorer) equal within 1e-4, on >= 20 real clips and
two encoder families. Batching several utterances must not change any result.
"""

from __future__ import annotations

import pytest

from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer
from pasu.tools.reference import espnet_nbest, espnet_speech2text

TOL = 1e-4
pytestmark = pytest.mark.slow  # ESPnet's own search on every clip: minutes


def assert_same_nbest(ref, ours, utt: str) -> None:
    assert [r.yseq for r in ref] == [o.yseq for o in ours], f"{utt}: n-best token sequences differ"
    for r, o in zip(ref, ours, strict=True):
        assert abs(r.score - o.score) <= TOL, f"{utt}: total score {r.score} vs {o.score}"
        assert set(r.scores) == set(o.scores), f"{utt}: scorer names {set(r.scores)} vs {set(o.scores)}"
        for k in r.scores:
            assert abs(r.scores[k] - o.scores[k]) <= TOL, f"{utt}: {k} score {r.scores[k]} vs {o.scores[k]}"


@pytest.mark.parametrize("kind", ["conformer", "branchformer", "late"])
def test_nbest_equals_espnet_on_all_clips(kind, tiny_models, audio):
    model = tiny_models[kind]
    options = DecodingOptions(beam_size=10, ctc_weight=0.3, nbest=5)
    s2t = espnet_speech2text(model, options)
    rec = Recognizer(model, options)
    assert len(audio) >= 20
    for utt, speech in audio.items():
        ref = espnet_nbest(s2t, speech)
        ours = rec.recognize([speech])[0]
        assert len(ref) == options.nbest
        assert_same_nbest(ref, ours, utt)
        # pasu drops the stray <eos> ESPnet keeps in a hypothesis cut at the length limit
        assert ours[0].text == ref[0].text.replace("<sos/eos>", "")


@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(beam_size=10, ctc_weight=0.3, nbest=3, ctc_recursion="loop"),
        DecodingOptions(beam_size=4, ctc_weight=0.5, penalty=0.5, nbest=2),
        DecodingOptions(beam_size=5, ctc_weight=0.3, maxlenratio=0.3, minlenratio=0.1, nbest=2),
        DecodingOptions(beam_size=3, ctc_weight=0.0, nbest=2),
        DecodingOptions(beam_size=3, ctc_weight=1.0, nbest=2),
        DecodingOptions(beam_size=6, ctc_weight=0.3, nbest=6, normalize_length=True),
    ],
    ids=["loop-recursion", "penalty", "length-ratios", "attention-only", "ctc-only", "normalize-length"],
)
def test_settings_equal_espnet(options, tiny_models, audio):
    model = tiny_models["conformer"]
    s2t = espnet_speech2text(model, options)
    rec = Recognizer(model, options)
    for utt in list(audio)[:4]:
        assert_same_nbest(espnet_nbest(s2t, audio[utt]), rec.recognize([audio[utt]])[0], utt)


@pytest.mark.parametrize("kind", ["conformer", "branchformer"])
def test_batch_equals_alone(kind, tiny_models, audio):
    """Utterances of different lengths decoded as one batch give each one's own result."""
    rec = Recognizer(tiny_models[kind], DecodingOptions(beam_size=8, nbest=4))
    utts = list(audio)[:7]
    batched = rec.recognize([audio[u] for u in utts])
    assert len(batched) == len(utts)
    for utt, got in zip(utts, batched, strict=True):
        alone = rec.recognize([audio[utt]])[0]
        assert [h.yseq for h in got] == [h.yseq for h in alone], utt
        for a, b in zip(got, alone, strict=True):
            assert abs(a.score - b.score) <= TOL


def test_scan_and_loop_recursions_agree(tiny_models, audio):
    model = tiny_models["branchformer"]
    scan = Recognizer(model, DecodingOptions(nbest=3))
    loop = Recognizer(model, DecodingOptions(nbest=3, ctc_recursion="loop"))
    for utt in list(audio)[:5]:
        a, b = scan.recognize([audio[utt]])[0], loop.recognize([audio[utt]])[0]
        assert [h.yseq for h in a] == [h.yseq for h in b]
        assert all(abs(x.score - y.score) <= TOL for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("role", ["device", "cloud"])
def test_shipped_models_equal_espnet(role, audio):
    """The trained default pair, not only random tiny models: real, peaked score
    distributions exercise pruning and end detection the way users see them."""
    from pasu.model_store import default_model_dir
    from pasu.models import load_model

    path = default_model_dir(role)
    if path is None:
        pytest.skip(f"no shipped {role} model in this checkout")
    model = load_model(path)
    options = DecodingOptions(beam_size=10, ctc_weight=0.3, nbest=3)
    s2t = espnet_speech2text(model, options)
    rec = Recognizer(model, options)
    clips = list(audio.items())[:8]
    for utt, speech in clips:
        ref = espnet_nbest(s2t, speech)
        ours = rec.recognize([speech])[0]
        assert_same_nbest(ref, ours, utt)
    # and batched: the same answers as alone
    batched = rec.recognize([s for _, s in clips])
    for (utt, speech), hyps in zip(clips, batched, strict=True):
        assert [h.yseq for h in hyps] == [h.yseq for h in rec.recognize([speech])[0]], utt
