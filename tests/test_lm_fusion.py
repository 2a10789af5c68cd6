"""LM shallow fusion (``lm_weight``) reproduces ESPnet's Speech2Text with the same LM.

Tiny ESPnet LMs of both families (Transformer, sequential LSTM) built by
``pasu.tools.tiny`` from ESPnet configs with seeded random weights; the n-best
token sequences must equal Speech2Text's, every score within float rounding,
the LM's own scores bit-for-bit, and the LM must change the answer somewhere
(it ran). With ``lm_weight`` 0 a model loaded with its LM decodes exactly as
one without.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from pasu.decoding import DecodingOptions, Recognizer
from pasu.models import ModelLoadError, load_model
from pasu.streaming import StreamingOptions, StreamingSession
from pasu.streaming.termination import BeamTermination
from pasu.tools.reference import espnet_nbest, espnet_speech2text
from pasu.tools.tiny import TINY_LM_KINDS, TinyLMOptions, build_tiny_lm

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_lm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-lms")
    return {kind: build_tiny_lm(root / kind, TinyLMOptions(kind=kind)) for kind in TINY_LM_KINDS}


@pytest.fixture(scope="module")
def with_lm(tiny_model_dirs, tiny_lm_dirs):
    """{lm kind: the tiny Conformer loaded with that LM}."""
    return {
        kind: load_model(tiny_model_dirs["conformer"], lm_train_config=d / "config.yaml", lm_file=d / "model.pth")
        for kind, d in tiny_lm_dirs.items()
    }


def assert_same(ref, ours, utt):
    assert [r.yseq for r in ref] == [o.yseq for o in ours], f"{utt}: n-best token sequences differ"
    for r, o in zip(ref, ours, strict=True):
        assert abs(r.score - o.score) <= TOL, f"{utt}: total {r.score} vs {o.score}"
        assert set(r.scores) == set(o.scores), utt
        for k in r.scores:
            assert abs(r.scores[k] - o.scores[k]) <= TOL, f"{utt}: {k} {r.scores[k]} vs {o.scores[k]}"
        assert r.scores["lm"] == o.scores["lm"], f"{utt}: the LM's own score is not bit-identical"


@pytest.mark.slow
@pytest.mark.parametrize("kind", TINY_LM_KINDS)
@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(beam_size=10, ctc_weight=0.3, nbest=5, lm_weight=0.5),
        DecodingOptions(beam_size=4, ctc_weight=0.5, nbest=2, lm_weight=1.0, penalty=0.5),
    ],
    ids=["w0.5", "w1-penalty"],
)
def test_nbest_equals_espnet_with_lm(kind, options, with_lm, tiny_lm_dirs, audio):
    model = with_lm[kind]
    s2t = espnet_speech2text(model, options)  # with the model's LM, as pasu.tools.reference runs it
    assert model.lm is not None and model.lm.files.config == (tiny_lm_dirs[kind] / "config.yaml").resolve()
    rec = Recognizer(model, options)
    plain = Recognizer(model, options.with_(lm_weight=0.0))
    changed = 0
    for utt in list(audio)[:8]:
        ours = rec.recognize([audio[utt]])[0]
        assert_same(espnet_nbest(s2t, audio[utt]), ours, utt)
        changed += [h.yseq for h in ours] != [h.yseq for h in plain.recognize([audio[utt]])[0]]
    assert changed > 0, "the LM never changed an n-best: did it run?"


@pytest.mark.parametrize("kind", TINY_LM_KINDS)
def test_weight_zero_is_todays_search_bit_for_bit(kind, with_lm, tiny_models, audio):
    options = DecodingOptions(beam_size=6, ctc_weight=0.3, nbest=3)
    a = Recognizer(with_lm[kind], options)
    b = Recognizer(tiny_models["conformer"], options)
    assert tiny_models["conformer"].lm is None and "lm" in a.scorers
    for utt in list(audio)[:3]:
        x, y = a.recognize([audio[utt]])[0], b.recognize([audio[utt]])[0]
        assert [(h.yseq, h.score, h.scores) for h in x] == [(h.yseq, h.score, h.scores) for h in y], utt
        assert all("lm" not in h.scores for h in x)


@pytest.mark.parametrize("kind", TINY_LM_KINDS)
def test_batch_equals_alone_with_lm(kind, with_lm, audio):
    """The LM state is batched over utterances of different lengths without mixing them."""
    rec = Recognizer(with_lm[kind], DecodingOptions(beam_size=5, ctc_weight=0.3, nbest=3, lm_weight=0.7))
    utts = list(audio)[:4]
    batched = rec.recognize([audio[u] for u in utts])
    for utt, got in zip(utts, batched, strict=True):
        alone = rec.recognize([audio[utt]])[0]
        assert [h.yseq for h in got] == [h.yseq for h in alone], utt
        assert [h.score for h in got] == pytest.approx([h.score for h in alone], abs=TOL)


@pytest.mark.parametrize("kind", TINY_LM_KINDS)
def test_seeded_search_primes_the_lm(kind, with_lm, audio):
    """A search seeded with a prefix (beam collapse) scores it with the LM as the full search does."""
    rec = Recognizer(with_lm[kind], DecodingOptions(beam_size=6, ctc_weight=0.3, nbest=6, lm_weight=0.5))
    utt = list(audio)[1]
    batch = rec.encode([audio[utt]])
    full = rec.decode(batch)[0]
    best = full[0]
    prefix = best.yseq[1:4]
    seeded = rec.decode(batch, prefixes=[prefix])[0]
    same = [h for h in seeded if h.yseq == best.yseq]
    assert same, "the seeded search lost the full search's best hypothesis"
    assert same[0].scores["lm"] == pytest.approx(best.scores["lm"], abs=TOL)
    assert same[0].score == pytest.approx(best.score, abs=TOL)


def test_exact_termination_holds_with_lm(with_lm, audio):
    """Every LM increment is a log-probability times a weight >= 0: the exact stop rule's bound still holds."""
    fired = 0
    for kind in TINY_LM_KINDS:
        rec = Recognizer(with_lm[kind], DecodingOptions(beam_size=6, ctc_weight=0.3, nbest=2, lm_weight=0.5))
        for utt in list(audio)[:4]:
            batch = rec.encode([audio[utt]])
            stop = BeamTermination(nbest=2, penalty=0.0)
            early, full = rec.decode(batch, stop=stop)[0], rec.decode(batch)[0]
            assert [h.yseq for h in early] == [h.yseq for h in full], (kind, utt)
            assert [h.score for h in early] == pytest.approx([h.score for h in full], abs=1e-5)
            fired += stop.stops_exact
    assert fired > 0  # the rule did stop searches early


@pytest.mark.parametrize("kind", TINY_LM_KINDS)
def test_streaming_session_with_lm(kind, with_lm, audio):
    rec = Recognizer(with_lm[kind], DecodingOptions(beam_size=6, ctc_weight=0.3, nbest=2, lm_weight=0.5))
    utt = max(audio, key=lambda u: len(audio[u]))

    def stream(options):
        s = StreamingSession(rec, options)
        for i in range(0, len(audio[utt]), 1600):
            s.feed(audio[utt][i : i + 1600])
        return s.finalize()

    stock = stream(StreamingOptions.stock())
    want = rec.recognize([audio[utt]])[0]
    assert [h.yseq for h in stock.nbest] == [h.yseq for h in want]
    assert [h.score for h in stock.nbest] == pytest.approx([h.score for h in want], abs=TOL)
    on = stream(StreamingOptions(pilot_period_s=0.32))
    assert on.nbest and on.fired["pilots"] >= 3
    assert all("lm" in h.scores for p in on.pilots for h in p.nbest)
    assert "lm" in on.nbest[0].scores


def _copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_model_dir_loads_its_lm(tiny_model_dirs, tiny_lm_dirs, tmp_path):
    lm = tiny_lm_dirs["seq_rnn"]
    # 1. config keys, ESPnet's names, relative to the model
    a = _copy_model(tiny_model_dirs["conformer"], tmp_path / "keys")
    shutil.copytree(lm, a / "my_lm")
    config = yaml.safe_load((a / "config.yaml").read_text())
    config.update(lm_train_config="my_lm/config.yaml", lm_file="my_lm/model.pth")
    (a / "config.yaml").write_text(yaml.safe_dump(config))
    lm_a = load_model(a).lm
    assert lm_a is not None and lm_a.kind == "seq_rnn"
    assert load_model(a, with_lm=False).lm is None
    # 2. an lm/ directory beside the model
    b = _copy_model(tiny_model_dirs["conformer"], tmp_path / "beside")
    shutil.copytree(tiny_lm_dirs["transformer"], b / "lm")
    lm_b = load_model(b).lm
    assert lm_b is not None and lm_b.kind == "transformer"
    # 3. an ESPnet pack (meta.yaml naming the ASR model and the LM under exp/)
    c = tmp_path / "packed"
    _copy_model(tiny_model_dirs["conformer"], c / "exp" / "asr")
    shutil.copytree(lm, c / "exp" / "lm_train")
    meta = {
        "yaml_files": {"asr_train_config": "exp/asr/config.yaml", "lm_train_config": "exp/lm_train/config.yaml"},
        "files": {"asr_model_file": "exp/asr/model.pth", "lm_file": "exp/lm_train/model.pth"},
    }
    (c / "meta.yaml").write_text(yaml.safe_dump(meta))
    m = load_model(c)
    assert m.files.config == (c / "exp" / "asr" / "config.yaml").resolve()
    assert m.lm is not None and m.lm.kind == "seq_rnn"
    # and it decodes with it
    assert "lm" in Recognizer(m, DecodingOptions(beam_size=2, lm_weight=0.3)).scorers


def test_clear_errors(tiny_model_dirs, tiny_models, tmp_path):
    with pytest.raises(ValueError, match="came without a language model"):
        Recognizer(tiny_models["conformer"], DecodingOptions(lm_weight=0.3))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lm_weight"):
            DecodingOptions(lm_weight=bad)
    other = build_tiny_lm(tmp_path / "other", TinyLMOptions(tokens=("<blank>", "<unk>", "a", "b", "<sos/eos>")))
    with pytest.raises(ModelLoadError, match="other tokens"):
        load_model(tiny_model_dirs["conformer"], lm_train_config=other / "config.yaml")
    asr_as_lm = tiny_model_dirs["conformer"] / "config.yaml"
    with pytest.raises(ModelLoadError, match="not an ESPnet LM training config"):
        load_model(tiny_model_dirs["conformer"], lm_train_config=asr_as_lm)


def test_cloud_worker_fuses_its_models_lm_and_refuses_a_weight_without_one(tiny_model_dirs, tiny_lm_dirs, tmp_path):
    """`pasu cloud serve --lm-weight`: the worker answers as the Recognizer with the model's LM
    does; a model without an LM does not start serving with a weight."""
    from pasu.audio import float_to_pcm16, pcm16_to_float, read_audio
    from pasu.cloud import client as C
    from pasu.cloud.config import WorkerConfig
    from pasu.cloud.server import CloudWorker
    from pasu.resources import example_audio

    bare = CloudWorker(WorkerConfig(port=0, lm_weight=0.5), tiny_model_dirs["conformer"])
    bare.start()
    with pytest.raises(RuntimeError, match="no LM"):
        bare.wait_ready(120)
    bare.stop(grace=0)

    d = _copy_model(tiny_model_dirs["conformer"], tmp_path / "with-lm")
    shutil.copytree(tiny_lm_dirs["seq_rnn"], d / "lm")
    clip = pcm16_to_float(float_to_pcm16(read_audio(sorted(example_audio(1))[0])))
    expected = {}
    for w in (0.0, 1.0):
        rec = Recognizer(load_model(d), DecodingOptions(beam_size=2, nbest=1, lm_weight=w))
        expected[w] = rec.recognize([clip])[0][0]
    worker = CloudWorker(WorkerConfig(port=0, default_beam_size=2, lm_weight=1.0), d)
    worker.start(wait=True, timeout=120)
    try:
        ch = C.channel(f"127.0.0.1:{worker.port}")
        r = C.stub(ch).Recognize(C.recognize_request("lm-1", clip), timeout=60)
        ch.close()
    finally:
        worker.stop(grace=0.5)
    top = r.result.hypotheses[0]
    assert list(top.token_ids) == expected[1.0].token_ids
    assert top.scores.total == pytest.approx(expected[1.0].score, abs=1e-3)
    assert expected[1.0].score != pytest.approx(expected[0.0].score, abs=1e-3)  # the LM counted
