"""Streaming sessions (pilot inference): each technique is a switch; the exact ones stay exact."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pasu.audio import AudioError
from pasu.decoding import DecodingOptions, Recognizer
from pasu.streaming import StreamingOptions, StreamingSession
from pasu.streaming.commit import confirmed_length
from pasu.streaming.ctc_leap import PrefixForwardCache
from pasu.streaming.termination import BeamTermination


def stream(rec, options, audio, chunk=2560, background=False):
    s = StreamingSession(rec, options, background=background)
    for i in range(0, len(audio), chunk):
        s.feed(audio[i : i + chunk])
    return s.finalize()


@pytest.fixture(scope="module")
def late_rec(tiny_models):
    return Recognizer(tiny_models["late"], DecodingOptions(beam_size=8, nbest=3))


@pytest.mark.slow
def test_stock_options_equal_whole_utterance_decoding(tiny_models, audio):
    rec = Recognizer(tiny_models["conformer"], DecodingOptions(beam_size=8, nbest=3))
    for utt in list(audio)[:4]:
        got = stream(rec, StreamingOptions.stock(), audio[utt])
        want = rec.recognize([audio[utt]])[0]
        assert [h.yseq for h in got.nbest] == [h.yseq for h in want], utt
        assert got.pilots == [] and got.prefix_len == 0


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [160, 2560, 7777])
def test_late_contextualization_alone_is_exact(late_rec, audio, chunk):
    for utt in list(audio)[:3]:
        got = stream(late_rec, StreamingOptions.only("late_context"), audio[utt], chunk)
        want = late_rec.recognize([audio[utt]])[0]
        assert [h.yseq for h in got.nbest] == [h.yseq for h in want], utt
        assert all(abs(a.score - b.score) < 1e-3 for a, b in zip(got.nbest, want, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("normalize_length", [False, True])
def test_exact_termination_never_changes_the_nbest(tiny_models, audio, normalize_length):
    fired = 0
    for kind in ("conformer", "late"):
        rec = Recognizer(tiny_models[kind], DecodingOptions(beam_size=8, nbest=2, normalize_length=normalize_length))
        for utt in list(audio)[:6]:
            batch = rec.encode([audio[utt]])
            stop = BeamTermination(
                nbest=2, penalty=0.0, normalize_length=normalize_length, max_len=int(batch.lengths[0])
            )
            early = rec.decode(batch, stop=stop)[0]
            full = rec.decode(batch)[0]
            assert [h.yseq for h in early] == [h.yseq for h in full], (kind, utt)
            assert [h.score for h in early] == pytest.approx([h.score for h in full], abs=1e-5)
            fired += stop.stops_exact
    if not normalize_length:
        assert fired > 0  # the rule did stop searches early


def test_pilots_run_during_ingestion_and_seed_the_final_search(late_rec, audio):
    utt = max(audio, key=lambda u: len(audio[u]))
    opts = StreamingOptions(pilot_period_s=0.32, collapse_holdback=1)
    res = stream(late_rec, opts, audio[utt], chunk=1600)
    assert len(res.pilots) >= 4
    heard = [p.audio_s for p in res.pilots]
    assert heard == sorted(heard) and heard[-1] <= len(audio[utt]) / 16000
    assert all(p.nbest for p in res.pilots)
    assert res.fired["pilots"] == len(res.pilots)
    for key in ("ctc_attention_agreement", "audio_s"):
        assert key in res.features and np.isfinite(res.features[key])


def test_ctc_leap_equals_recomputation_when_old_frames_are_unchanged(late_rec, audio):
    """With the old frames' posteriors unchanged the leap is exact; it must match a full recomputation."""
    rec = late_rec
    speech = audio[list(audio)[0]]
    batch = rec.encode([speech])
    with torch.inference_mode():
        logp = rec.model.model.ctc.log_softmax(batch.enc)[0]
    tokens = rec.decode(batch)[0][0].token_ids[:6]
    assert tokens
    T = logp.size(0)
    full = PrefixForwardCache().update(tokens, logp, leap=False)
    cache = PrefixForwardCache()
    cache.update(tokens[:4], logp[: T // 2], leap=True)
    leapt = cache.update(tokens, logp, leap=True)
    assert leapt.psi == pytest.approx(full.psi, abs=1e-4)
    assert isinstance(leapt.r, np.ndarray) and leapt.r.dtype == np.float64 and leapt.r.shape == (T, 2)
    assert np.allclose(np.maximum(leapt.r, -1e4), np.maximum(full.r, -1e4), atol=1e-3)
    # and the forward variables equal the decoder's own CTC scorer replaying the prefix
    yseq = torch.tensor([[rec.model.sos, *tokens]])
    with torch.inference_mode():
        sess = rec.scorers["ctc"].begin(batch, torch.tensor([0]))
        replay = float(sess.prime(yseq, torch.tensor([0]))[0])
    assert replay == pytest.approx(full.psi, abs=1e-3)


def test_pilot_logic_runs_without_torch():
    """Beam collapse's confirmation and the CTC leap import neither torch nor ESPnet (pasu.lite)."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from pasu.streaming.commit import confirm
from pasu.streaming.ctc_leap import PrefixForwardCache

class Pass:  # a decoder pass that prefers the prefix's own tokens
    def __init__(self, prefix):
        self.logp = np.log(np.full((len(prefix), 6), 0.02))
        self.logp[np.arange(len(prefix)), prefix] = np.log(0.9)

rng = np.random.default_rng(0)
x = rng.normal(size=(40, 6))
logp = x - np.log(np.exp(x).sum(1, keepdims=True))
cache = PrefixForwardCache()
confirm([2, 3], logp[:20], Pass, 0.3, cache)
seed = confirm([2, 3, 3, 5], logp, Pass, 0.3, cache)
assert seed is not None and seed.hint is not None and seed.hint.r.shape == (40, 2), seed
assert seed.leapt and cache.reused_tokens == 2 and cache.extended_frames == 20
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "espnet", "espnet2"))
assert not bad, bad[:5]
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_seeded_search_with_leap_hint_equals_replay(late_rec, audio):
    rec = late_rec
    speech = audio[list(audio)[1]]
    batch = rec.encode([speech])
    with torch.inference_mode():
        logp = rec.model.model.ctc.log_softmax(batch.enc)[0]
    prefix = rec.decode(batch)[0][0].token_ids[:4]
    hint = PrefixForwardCache().update(prefix, logp, leap=False)
    a = rec.decode(batch, prefixes=[prefix], beam_size=3)[0]
    b = rec.decode(batch, prefixes=[prefix], beam_size=3, prime_hints={"ctc": hint})[0]
    assert [h.yseq for h in a] == [h.yseq for h in b]
    assert all(h.token_ids[: len(prefix)] == prefix for h in a)
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-3)


def test_seeded_search_reuses_the_confirmations_decoder_pass_exactly(late_rec, audio):
    """The decoder pass that confirmed a longer prefix primes the search from its start: the
    same n-best, scores to the bit, and no second teacher-forced pass."""
    from pasu.decoding.kv_decoder import KVCacheDecoderSession

    rec = late_rec
    batch = rec.encode([audio[list(audio)[3]]])
    best = rec.decode(batch)[0][0].token_ids
    assert len(best) >= 4
    with torch.inference_mode():
        passed = rec.prefix_pass(batch, best)
    assert passed is not None and passed.logp.size(0) == len(best)
    prefix = best[:3]
    a = rec.decode(batch, prefixes=[prefix], beam_size=3)[0]
    calls = []
    original = KVCacheDecoderSession.teacher_forced
    KVCacheDecoderSession.teacher_forced = lambda self, *x: calls.append(1) or original(self, *x)
    try:
        b = rec.decode(batch, prefixes=[prefix], beam_size=3, prime_hints={"decoder": passed})[0]
    finally:
        KVCacheDecoderSession.teacher_forced = original
    assert not calls  # the hint was used
    assert [h.token_ids for h in a] == [h.token_ids for h in b]
    assert [h.score for h in a] == [h.score for h in b]
    assert [h.scores for h in a] == [h.scores for h in b]


def test_background_worker_gives_the_same_answer(late_rec, audio):
    speech = audio[list(audio)[2]]
    opts = StreamingOptions.only("late_context")
    fg = stream(late_rec, opts, speech)
    bg = stream(late_rec, opts, speech, background=True)
    assert [h.yseq for h in bg.nbest] == [h.yseq for h in fg.nbest]
    # with pilots on, the worker runs them while the caller keeps feeding
    s = StreamingSession(late_rec, StreamingOptions(pilot_period_s=0.2), background=True)
    for i in range(0, len(speech), 800):
        s.feed(speech[i : i + 800])
    res = s.finalize()
    assert res.best is not None and len(res.pilots) >= 1


def test_bad_input_and_misuse(late_rec, audio):
    s = StreamingSession(late_rec, StreamingOptions())
    with pytest.raises(AudioError, match="NaN"):
        s.feed(np.array([0.0, np.nan], dtype=np.float32))
    s.feed(np.zeros(100, dtype=np.float32) + 1e-3)
    with pytest.raises(ValueError, match="too short"):
        s.finalize()
    with pytest.raises(RuntimeError, match="after finalize"):
        s.feed(np.zeros(10, dtype=np.float32))
    ok = StreamingSession(late_rec, StreamingOptions())
    ok.feed((audio[list(audio)[0]] * 32767).astype(np.int16))  # int16 works too
    ok.finalize()
    with pytest.raises(RuntimeError, match="twice"):
        ok.finalize()


def test_one_model_decodes_safely_from_many_threads(tiny_models, audio):
    """ESPnet's attention keeps per-call state on the module: pasu serialises
    forward passes per model (pasu.models.forward_lock), so threads sharing one
    model — background pilots, the final pass, a cloud worker in the same
    process — get exactly the answers they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from pasu.decoding.options import DecodingOptions
    from pasu.decoding.recognizer import Recognizer

    rec = Recognizer(tiny_models["conformer"], DecodingOptions(beam_size=3, nbest=1))
    clips = list(audio.values())[:6]
    alone = [rec.recognize([c])[0][0].token_ids for c in clips]
    encoded = [rec.encode([c]).enc for c in clips]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda c: rec.recognize([c])[0][0].token_ids, clips * 3))
        # the encoder alone, many times: the race window is widest there
        encs = list(pool.map(lambda i: (i, rec.encode([clips[i % 6]]).enc), range(120)))
    assert together == alone * 3
    for i, enc in encs:
        assert torch.equal(enc, encoded[i % 6]), i


def test_ablation_rows_keep_the_configured_settings() -> None:
    base = StreamingOptions(collapse_margin=3.0, pilot_period_s=0.32)
    only = StreamingOptions.only("beam_collapse", base)
    assert (only.beam_collapse, only.pilots, only.late_context, only.ctc_leap) == (True, True, False, False)
    assert only.collapse_margin == 3.0 and only.pilot_period_s == 0.32
    assert StreamingOptions.only("late_context") == StreamingOptions.stock().with_(late_context=True)


# -- the techniques fire on a trained model (the shipped device model), and stop when switched off --------


@pytest.fixture(scope="module")
def shipped():
    from pasu.model_store import default_model_dir
    from pasu.models import load_model

    d = default_model_dir("device")
    if d is None:
        pytest.skip("no shipped device model in this checkout")
    return Recognizer(load_model(d), DecodingOptions())


@pytest.fixture(scope="module")
def commands():
    from pasu.audio import read_audio, read_scp
    from pasu.resources import ROOT

    d = ROOT / "eval" / "test_hard"
    scp = read_scp(d / "wav.scp")
    return [read_audio(d / scp[u]) for u in list(scp)[:4]]


def test_pilots_build_on_each_other_and_seed_the_final_search(shipped, commands):
    opts = StreamingOptions(label_rescore=0)  # label rescoring may revise a seed's label: tested apart
    results = [stream(shipped, opts, a) for a in commands]
    assert sum(r.fired["pilot_continuations"] for r in results) >= len(results)
    for r in results:
        seeded = [p for p in r.pilots if p.prefix_len]
        for p in seeded:  # a continued pilot extends its seed: the agreed prefix never shrinks
            before = r.pilots[r.pilots.index(p) - 1].nbest[0].token_ids
            assert p.nbest[0].token_ids[: p.prefix_len] == before[: p.prefix_len]
        if r.fired["beam_collapse"]:
            assert r.prefix_len > 0 and r.beam_size == opts.collapse_beam_size
            assert r.best.token_ids[: r.prefix_len] == r.pilots[-1].nbest[0].token_ids[: r.prefix_len]
    assert sum(r.fired["beam_collapse"] for r in results) >= len(results) - 1
    off = [stream(shipped, opts.with_(beam_collapse=False), a) for a in commands]
    assert all(r.fired["beam_collapse"] == r.fired["pilot_continuations"] == r.prefix_len == 0 for r in off)
    assert all(r.beam_size == shipped.options.beam_size for r in off)


def test_ctc_leap_extends_the_pilots_forward_variables(shipped, commands):
    results = [stream(shipped, StreamingOptions(), a) for a in commands]
    assert sum(r.fired["ctc_leap"] for r in results) >= len(results) - 1
    off = [stream(shipped, StreamingOptions(ctc_leap=False), a) for a in commands]
    assert all(r.fired["ctc_leap"] == 0 for r in off)


def test_final_tolerance_keeps_more_of_the_last_pilots_words(shipped, commands):
    """The final seed keeps the last pilot's tokens that trail the joint pick by at most
    ``collapse_final_tolerance``: the same pilots, a longer seed by exactly the counted tokens,
    and nothing kept that way when the tolerance is 0."""
    on = [stream(shipped, StreamingOptions(), a) for a in commands]
    strict = [stream(shipped, StreamingOptions(collapse_final_tolerance=0.0), a) for a in commands]
    assert sum(r.fired["seed_tolerated"] > 0 for r in on) >= 1
    assert all(r.fired["seed_tolerated"] == 0 for r in strict)
    for r, s in zip(on, strict, strict=True):
        assert [p.nbest[0].token_ids for p in r.pilots] == [p.nbest[0].token_ids for p in s.pilots]
        assert r.prefix_len - r.fired["seed_tolerated"] == s.prefix_len
        assert r.best.token_ids[: r.prefix_len] == r.pilots[-1].nbest[0].token_ids[: r.prefix_len]


def test_confirmation_tolerance_only_ever_keeps_more():
    """``confirm(tolerance=)``: the kept prefix grows with the tolerance, ``tolerated`` counts the
    tokens past the strict cut, and a large tolerance keeps the whole prefix."""
    from pasu.streaming.commit import confirm

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8))
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))

    y = rng.normal(size=(6, 8))  # a decoder with opinions of its own, so a strict confirmation cuts early
    dec = SimpleNamespace(logp=y - np.log(np.exp(y).sum(1, keepdims=True)))
    prefix = [2, 3, 5, 1, 4, 6]
    kept = []
    for tolerance in (0.0, 0.5, 1.0, 2.0, 4.0, 100.0):
        seed = confirm(prefix, logp, lambda _: dec, 0.3, tolerance=tolerance)
        n = len(seed.prefix) if seed else 0
        assert seed is None or seed.tolerated == n - (kept[0] if kept else n)
        kept.append(n)
    assert kept == sorted(kept) and kept[0] < len(prefix) and kept[-1] == len(prefix)


def test_a_seed_never_outgrows_the_searchs_length_limit(tiny_models, audio):
    """A babbling model's pilots reach ``maxlenratio``'s limit: a seed that long would leave the
    final search nothing to end, so it is refused (``too_long``) and every final has an answer."""
    rec = Recognizer(tiny_models["late"], DecodingOptions(beam_size=2, maxlenratio=0.3))
    opts = StreamingOptions(collapse_final_tolerance=1e6)  # keep every token the pilots said
    refused = 0
    for a in list(audio.values())[:4]:
        limit = rec.options.max_output_length(int(rec.encode([a]).lengths[0]))
        r = stream(rec, opts, a, chunk=1600)
        assert r.nbest and r.prefix_len < limit - 1 and len(r.best.token_ids) <= limit
        refused += r.refused.get("too_long", 0)
    assert refused > 0


def test_late_contextualization_fires_only_where_the_encoder_streams(tiny_models, late_rec, audio):
    speech = audio[list(audio)[0]]
    assert stream(late_rec, StreamingOptions.only("late_context"), speech).fired["late_context"] == 1
    conformer = Recognizer(tiny_models["conformer"], DecodingOptions(beam_size=4))
    assert stream(conformer, StreamingOptions.only("late_context"), speech).fired["late_context"] == 0


def _confirmed_by_the_search(rec, batch, prefix):
    """The same decision as confirmed_length, from the search's own scorer sessions, token by token."""
    w = rec.options.ctc_weight
    rows = torch.tensor([0])
    dec = rec.scorers["decoder"].begin(batch, rows)
    ctc = rec.scorers["ctc"].begin(batch, rows)
    yseq = torch.tensor([[rec.model.sos]])
    for u, tok in enumerate(prefix):
        d = dec.score(yseq, rows, None)[0]
        cand = torch.cat((torch.tensor([tok]), d.topk(8).indices)).unsqueeze(0)
        c = ctc.score(yseq, rows, cand)[0]
        joint = (1 - w) * d[cand[0]].double() + w * c[cand[0]].double()
        if joint[0] < joint[1:].max() - 1e-4:
            return u
        dec.advance(rows, torch.tensor([tok]))
        ctc.advance(rows, torch.tensor([tok]))
        yseq = torch.cat((yseq, torch.tensor([[tok]])), dim=1)
    return len(prefix)


@torch.inference_mode()
def test_confirmation_weighs_each_token_as_the_search_does(shipped, commands):
    rec = shipped
    checked = cut = 0
    for a in commands:
        batch = rec.encode([a])
        best = rec.decode(batch)[0][0].token_ids
        logp = rec.model.model.ctc.log_softmax(batch.enc)[0]
        for prefix in (best, best[:3] + [best[3] + 1] + best[4:], list(reversed(best))):
            cache = PrefixForwardCache()
            cache.update(prefix, logp, leap=False)
            sess = rec.scorers["decoder"].begin(batch, torch.tensor([0]))
            dec = sess.teacher_forced(torch.tensor([[rec.model.sos, *prefix]]), torch.tensor([0]))[0]
            got = confirmed_length(prefix, dec, logp, cache.R, rec.options.ctc_weight)
            assert got == _confirmed_by_the_search(rec, batch, prefix), prefix
            checked += 1
            cut += got < len(prefix)
    assert checked == 3 * len(commands) and cut >= len(commands)  # wrong prefixes are cut


# -- guards for an SLU model's intent label, which an early pilot commits (pasu.streaming.commit) --------


@torch.inference_mode()
def test_label_rescoring_scores_other_labels_as_a_full_search_would(shipped, commands):
    """A seed with the wrong label: the search keeps it; rescoring the words under the
    decoder's other labels gives back the label the unseeded search picks, with the
    exact CTC full-sequence probability."""
    from pasu.streaming.commit import Seed, label_position, rescore_label

    rec, w = shipped, shipped.options.ctc_weight
    restored = 0
    for a in commands:
        batch = rec.encode([a])
        full = rec.decode(batch)[0][0]
        pos = label_position(full)
        assert pos is not None, full.text
        row = rec.prefix_pass(batch, full.token_ids[: pos + 1]).logp[pos]
        runner_up = next(int(t) for t in row.topk(3).indices if int(t) != full.token_ids[pos])
        prefix = [*full.token_ids[:pos], runner_up]
        seed = Seed(prefix, None, False, rec.prefix_pass(batch, prefix))
        wrong = rec.decode(batch, prefixes=[prefix], prime_hints=seed.prime_hints())[0][0]
        assert wrong.token_ids[pos] == runner_up  # the seeded search never revisits the label
        logp = rec.ctc_log_probs(batch)
        relabel, tried = rescore_label(wrong, seed, logp, lambda t, b=batch: rec.prefix_pass(b, t), rec.eos, w, 3, 50.0)
        assert tried == 3
        if relabel is None:
            continue
        assert relabel.gain > 0
        target = torch.tensor([relabel.token_ids])
        exact = -torch.nn.functional.ctc_loss(
            torch.as_tensor(logp)[:, None].float(),
            target,
            torch.tensor([logp.shape[0]]),
            torch.tensor([target.size(1)]),
            reduction="sum",
        )
        assert relabel.ctc == pytest.approx(float(exact), abs=1e-3)
        restored += relabel.token_ids[pos] == full.token_ids[pos]
    assert restored >= len(commands) // 2


def test_label_guards_fire_in_the_session_and_stop_when_switched_off(shipped, commands):
    """Each guard leaves its mark (counters, refusals, shorter seeds); switched off, none."""
    base = StreamingOptions(label_rescore=0)
    rescore = base.with_(label_rescore=3, label_rescore_window=50.0)
    runs = {
        "rescore": rescore.with_(label_rescore_pilots=True, label_rescore_final="always"),
        "final_only": rescore.with_(label_rescore_pilots=False, label_rescore_final="always"),
        "pilots_only": rescore.with_(label_rescore_pilots=True, label_rescore_final="never"),
        "pilots": base.with_(collapse_label_pilots=3),
        "ctc": base.with_(collapse_ctc_agree=1000),
        "margin": base.with_(collapse_label_margin=100.0),
        "off": base,
    }
    got = {k: [stream(shipped, o, a) for a in commands] for k, o in runs.items()}
    n = {k: sum(r.fired["label_rescore"] for r in got[k]) for k in ("rescore", "final_only", "pilots_only")}
    assert len(commands) - 1 <= n["final_only"] <= len(commands)  # each seeded final search's label, once
    assert n["pilots_only"] >= len(commands) and n["rescore"] > n["pilots_only"]
    assert sum(r.refused.get("label_unsettled", 0) for r in got["pilots"]) >= 2 * len(commands)
    assert sum(r.refused.get("ctc_disagrees", 0) for r in got["ctc"]) >= 1
    assert all(r.prefix_len == 0 for r in got["margin"])  # no label passes a 100-nat margin
    assert sum(r.refused.get("unconfirmed", 0) for r in got["margin"]) > sum(
        r.refused.get("unconfirmed", 0) for r in got["off"]
    )
    for r in got["off"]:
        assert r.fired["label_rescore"] == r.fired["label_changed"] == 0
        assert not r.refused.get("label_unsettled") and not r.refused.get("ctc_disagrees")
    assert sum(r.prefix_len for r in got["off"]) > 0


def test_label_rescore_final_takes_a_known_mode():
    assert StreamingOptions(label_rescore_final="unsettled").label_rescore_final == "unsettled"
    with pytest.raises(ValueError, match="label_rescore_final"):
        StreamingOptions(label_rescore_final="sometimes")
