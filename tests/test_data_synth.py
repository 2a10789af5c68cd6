"""`pasu data synth`: grammar, voice rule, determinism and a tiny real corpus.

The corpus tests run the real engines (espeak-ng, flite) and write real audio;
they skip, saying why, where the engines are not installed
(tools/data/install_engines.sh installs them).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pasu.tools.data import augment as A
from pasu.tools.data.engines import (
    FESTIVAL_TEST,
    FLITE_TEST,
    FLITE_TRAIN,
    Voice,
    detect_engines,
    is_test_voice,
    is_training_voice,
)
from pasu.tools.data.grammar import Grammar, read_intents, resource_path, spell_number, spell_ordinal
from pasu.tools.data.synth import SPLITS, SynthOptions, plan_corpus, render, synthesize_corpus, write_texts

REFERENCE_INTENTS = Path("/work/shared/slu/intents.tsv")
WORDS = re.compile(r"^[a-z]+( [a-z]+)*$")

ENGINES = detect_engines()
needs_engines = pytest.mark.skipif(
    not (ENGINES.espeak_ng and set(FLITE_TRAIN) <= set(ENGINES.flite) and set(FLITE_TEST) & set(ENGINES.flite)),
    reason="espeak-ng and flite (with awb, rms and kal/kal16/slt) are not installed; run tools/data/install_engines.sh",
)


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return Grammar.load()


# ---- grammar ---------------------------------------------------------------------------
def test_packaged_intents_match_the_reference() -> None:
    if not REFERENCE_INTENTS.exists():
        pytest.skip(f"{REFERENCE_INTENTS} not on this machine")
    assert resource_path("intents.tsv").read_text() == REFERENCE_INTENTS.read_text()


def test_grammar_covers_every_intent_with_enough_templates(grammar: Grammar) -> None:
    intents = [i.name for i in read_intents()]
    assert len(intents) == 54
    assert sorted(grammar.templates) == sorted(intents)
    counts = grammar.template_counts()
    for intent, (train, held) in counts.items():
        total = train + held
        assert total >= 30, intent
        assert held == max(1, round(0.15 * total)), intent
        assert train >= 25, intent
    held_share = sum(h for _, h in counts.values()) / sum(t + h for t, h in counts.values())
    assert 0.13 <= held_share <= 0.18


def test_grammar_makes_enough_distinct_normalized_sentences(grammar: Grammar) -> None:
    train = grammar.distinct_sentences(heldout=False)
    held = grammar.distinct_sentences(heldout=True)
    assert len(train) >= 15_000
    assert len(held) >= 1_000
    bad = [s for s in list(train)[:5000] + list(held) if not WORDS.match(s)]
    assert not bad, bad[:5]  # lowercase words only: no digits, no punctuation


def test_heldout_templates_are_disjoint_and_fixed(grammar: Grammar) -> None:
    again = Grammar.load()
    for intent, temps in grammar.templates.items():
        train_ids = {t.id for t in grammar.pool(intent, False)}
        held_ids = {t.id for t in grammar.pool(intent, True)}
        assert train_ids and held_ids and not train_ids & held_ids
        assert train_ids | held_ids == {t.id for t in temps}
        # held-out choice depends on the grammar only, never on a seed
        assert held_ids == {t.id for t in again.pool(intent, True)}
    rng = np.random.default_rng(1)
    for intent in grammar.intent_names:
        assert grammar.sample(rng, intent, heldout=True).template in {t.id for t in grammar.pool(intent, True)}
        assert grammar.sample(rng, intent).template in {t.id for t in grammar.pool(intent, False)}


def test_intents_tsv_examples_are_sentences_of_their_intent(grammar: Grammar) -> None:
    # the first example phrasing of each intent in intents.tsv is in the grammar
    for info in read_intents():
        found = grammar.match(info.examples[0])
        assert found and all(t.intent == info.name for t in found), (info.name, found)
    assert grammar.match("play yellow submarine by the beatles")[0].intent == "play_music"
    assert grammar.match("this is not a command of the grammar at all") == []


@pytest.mark.slow
def test_novel_grammar_shares_fillers_and_no_sentence_with_the_base(grammar: Grammar) -> None:
    # grammar_novel.yaml: templates the models never train on (the confidence
    # estimator's calibration set); `base:` gives it grammar.yaml's fillers
    novel = Grammar.load(resource_path("grammar_novel.yaml"))
    assert novel.intent_names == grammar.intent_names
    assert novel.fillers == grammar.fillers and novel.speak_as == grammar.speak_as
    assert all(len(t) == 6 for t in novel.templates.values())
    base_patterns = {t.pattern for ts in grammar.templates.values() for t in ts}
    assert not {t.pattern for ts in novel.templates.values() for t in ts} & base_patterns
    sentences = novel.distinct_sentences(heldout=None, per_template=50)
    assert not [s for s in sentences if grammar.match(s)][:5]  # no base template says any of them
    assert all(WORDS.match(s) for s in sentences)


def test_nlsyms_lists_the_intents() -> None:
    nlsyms = resource_path("nlsyms.txt").read_text().split()
    assert nlsyms == [i.name for i in read_intents()]


def test_numbers_are_spelled_out() -> None:
    assert spell_number(0) == "zero"
    assert spell_number(81) == "eighty one"
    assert spell_number(115) == "one hundred and fifteen"
    assert spell_number(2500) == "two thousand five hundred"
    assert spell_ordinal(1) == "first" and spell_ordinal(22) == "twenty second"
    assert spell_ordinal(30) == "thirtieth" and spell_ordinal(12) == "twelfth"


# ---- voice rule and determinism (planning only: fast) ----------------------------------
def test_voice_rule() -> None:
    for name in FLITE_TEST:
        assert is_test_voice(Voice("flite", name)) and not is_training_voice(Voice("flite", name))
    for name in FESTIVAL_TEST:
        assert is_test_voice(Voice("festival", name))
    for name in FLITE_TRAIN:
        assert is_training_voice(Voice("flite", name)) and not is_test_voice(Voice("flite", name))
    assert is_training_voice(Voice("espeak-ng", "en-gb-x-rp", "f3"))
    assert not is_training_voice(Voice("festival", "kal_diphone"))
    assert Voice.parse("espeak-ng:en-gb-x-rp+f3") == Voice("espeak-ng", "en-gb-x-rp", "f3")


@pytest.mark.slow
@needs_engines
def test_plan_follows_the_voice_and_template_rules(grammar: Grammar, tmp_path: Path) -> None:
    opts = SynthOptions(out_dir=tmp_path, train=1500, dev=200, test_voices=200, test_hard=200, calib=100)
    plans = plan_corpus(opts, grammar, ENGINES)
    held = {t.id for temps in grammar.templates.values() for t in temps if t.heldout}
    for split, ps in plans.items():
        assert len(ps) == opts.size(split)
        for p in ps:
            if split in ("train", "dev", "calib"):
                assert is_training_voice(p.voice) and not is_test_voice(p.voice), p
            else:
                assert is_test_voice(p.voice), p
            assert (p.template in held) == (split == "test_hard"), p
            assert WORDS.match(p.text)
    assert all(p.aug.noise and 5 <= p.aug.snr_db <= 20 for p in plans["calib"])  # test_hard's noise
    engines = Counter(p.voice.engine for p in plans["train"])
    assert engines["espeak-ng"] > engines["flite"] > 0
    assert len({p.voice for p in plans["train"]}) > 60  # many speakers
    intents = Counter(p.intent for p in plans["train"])
    assert len(intents) == 54 and max(intents.values()) - min(intents.values()) <= 1
    texts = [p.text for ps in plans.values() for p in ps]
    assert len(set(texts)) == len(texts)  # no sentence in two splits (or twice)
    train_aug = [p.aug for p in plans["train"]]
    assert any(a.noise == "babble" for a in train_aug) and any(a.vtlp != 1 for a in train_aug)
    assert all(5 <= a.snr_db <= 20 for a in train_aug if a.noise)
    assert all(a.noise and 5 <= a.snr_db <= 20 for a in (p.aug for p in plans["test_hard"]))


def test_band_limit_and_equalize() -> None:
    sr = 16000
    x = A.colored_noise(sr, "white", np.random.default_rng(0)) * 0.1
    y = A.band_limit(x, sr, 4000.0)
    spec, freqs = np.abs(np.fft.rfft(y)) ** 2, np.fft.rfftfreq(y.size, 1 / sr)
    assert y.size == x.size
    assert spec[freqs > 4100].sum() < 1e-4 * spec.sum()  # an 8 kHz recording's empty top band
    assert spec[(freqs > 500) & (freqs < 3500)].mean() > 0.5 * (np.abs(np.fft.rfft(x)) ** 2)[freqs < 3500].mean()
    assert A.band_limit(x, sr, 0.0) is x and A.band_limit(x, sr, 8000.0) is x
    z = A.equalize(x, sr, 0.0, [(2000.0, 10.0, 0.3)])
    band = lambda v, lo, hi: float((np.abs(np.fft.rfft(v)) ** 2)[(freqs >= lo) & (freqs < hi)].sum())  # noqa: E731
    assert band(z, 1800, 2200) / band(z, 200, 400) > 5 * band(x, 1800, 2200) / band(x, 200, 400)
    assert abs(A.rms(z) - A.rms(x)) < 1e-4  # the level is kept
    tilted = A.equalize(x, sr, 3.0)
    assert band(tilted, 4000, 8000) / band(tilted, 100, 500) > 4 * band(x, 4000, 8000) / band(x, 100, 500)


@pytest.mark.slow
@needs_engines
def test_training_audio_varies_voice_and_channel_and_tests_stay_clean(grammar: Grammar, tmp_path: Path) -> None:
    opts = SynthOptions(out_dir=tmp_path, train=1000, dev=0, test_voices=100, test_hard=100)
    plans = plan_corpus(opts, grammar, ENGINES)
    train = plans["train"]
    flite = [p.aug for p in train if p.voice.engine == "flite"]
    # flite's men are shifted up into other speakers: pitch up, formants up less than the pitch
    up = [a for a in flite if a.semitones >= 2 and 1.0 <= 2 ** (a.semitones / 12) * a.vtlp <= 1.25 + 1e-9]
    assert 0.35 < len(up) / len(flite) < 0.55
    assert 0.08 < sum(a.lowpass_hz > 0 for a in (p.aug for p in train)) / len(train) < 0.22
    assert 0.4 < sum(bool(a.eq_tilt or a.eq_bands) for a in (p.aug for p in train)) / len(train) < 0.6
    assert len({p.voice.variant for p in train if p.voice.engine == "espeak-ng"}) > 60
    for split in ("test_voices", "test_hard"):  # the test sets keep their own, unchanged recipe
        for a in (p.aug for p in plans[split]):
            assert (a.semitones, a.vtlp, a.lowpass_hz, a.eq_tilt, a.eq_bands) == (0.0, 1.0, 0.0, 0.0, ())
            assert a.speed == 1.0 and a.rate == 1.0 and a.pitch is None


@pytest.mark.slow
@needs_engines
def test_same_seed_same_texts(grammar: Grammar, tmp_path: Path) -> None:
    def texts(seed: int, out: Path) -> dict[str, str]:
        opts = SynthOptions(out_dir=out, seed=seed, train=300, dev=40, test_voices=40, test_hard=40)
        write_texts(opts, plan_corpus(opts, grammar, ENGINES))
        return {s: (out / s / "text").read_text() + (out / s / "utt2voice").read_text() for s in SPLITS}

    a, b, c = texts(7, tmp_path / "a"), texts(7, tmp_path / "b"), texts(8, tmp_path / "c")
    assert a == b
    assert a["train"] != c["train"]


@pytest.mark.slow
@needs_engines
def test_same_plan_same_audio(grammar: Grammar, tmp_path: Path) -> None:
    opts = SynthOptions(
        out_dir=tmp_path, seed=3, train=40, dev=0, test_voices=0, test_hard=4, splits=("train", "test_hard")
    )
    plans = plan_corpus(opts, grammar, ENGINES)
    # an utterance with as much augmentation as we can find, and a test one
    rich = max(
        plans["train"],
        key=lambda p: (
            (p.aug.noise not in ("", "babble"))
            + (p.aug.speed != 1)
            + (p.aug.semitones != 0)
            + (p.aug.vtlp != 1)
            + (p.aug.rt60 > 0)
            + (p.aug.lowpass_hz > 0)
            + bool(p.aug.eq_bands)
        ),
    )
    bank = [np.sin(np.arange(8000) / 7.0).astype(np.float32)]
    for p in (rich, plans["test_hard"][0]):
        x, y = render(p, bank), render(p, bank)
        assert np.array_equal(x, y)


# ---- a tiny real corpus -------------------------------------------------------------------
PER_SPLIT = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    opts = SynthOptions(out_dir=out, seed=11, jobs=2, progress=False).with_per_split(PER_SPLIT)
    summary = synthesize_corpus(opts, engines=ENGINES)
    assert summary.failed == []
    assert summary.counts == {s: PER_SPLIT for s in SPLITS}
    return out


def _table(path: Path) -> dict[str, str]:
    rows = [line.split(" ", 1) for line in path.read_text().splitlines()]
    return {k: v for k, v in rows}


@pytest.mark.slow
@needs_engines
def test_tiny_corpus_data_dirs_are_consistent(corpus: Path) -> None:
    intents = set(resource_path("nlsyms.txt").read_text().split())
    for split in SPLITS:
        d = corpus / split
        files = {f: (d / f).read_text().splitlines() for f in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2voice")}
        ids = [line.split()[0] for line in files["wav.scp"]]
        assert len(ids) == PER_SPLIT and ids == sorted(ids)
        for name in ("text", "utt2spk", "utt2voice"):
            assert [line.split()[0] for line in files[name]] == ids, (split, name)
        utt2spk = _table(d / "utt2spk")
        spk2utt = {line.split()[0]: line.split()[1:] for line in files["spk2utt"]}
        assert sorted(u for us in spk2utt.values() for u in us) == ids
        assert all(utt2spk[u] == s for s, us in spk2utt.items() for u in us)
        assert all(u.startswith(utt2spk[u] + "-") for u in ids)  # Kaldi sort order holds
        for line in files["text"]:
            _, intent, words = line.split(" ", 2)
            assert intent in intents and WORDS.match(words), line
        voices = {u: Voice.parse(v) for u, v in _table(d / "utt2voice").items()}
        for u, v in voices.items():
            assert v.speaker == utt2spk[u]
            if split in ("train", "dev", "calib"):
                assert is_training_voice(v) and not is_test_voice(v), (split, u, v)
            else:
                assert is_test_voice(v), (split, u, v)
    assert (corpus / "nlsyms.txt").read_text() == resource_path("nlsyms.txt").read_text()
    assert (corpus / "manifest.json").exists()


@pytest.mark.slow
@needs_engines
def test_tiny_corpus_audio_is_valid(corpus: Path) -> None:
    for split in SPLITS:
        for utt, path in _table(corpus / split / "wav.scp").items():
            path = Path(path)
            assert path.is_file() and path.suffix == ".flac" and corpus in path.parents
            info = sf.info(path)
            assert info.samplerate == 16000 and info.channels == 1, (utt, info)
            x, _ = sf.read(path, dtype="int16")
            assert 0.5 < x.size / 16000 < 15, utt
            assert A.longest_zero_run(x) <= 16, (utt, A.longest_zero_run(x))  # dithered
            assert A.rms(x[:800].astype(np.float32)) > 0  # leading pad is not digital silence
            # speech well above the dither floor (~16 LSB)
            assert A.rms(x.astype(np.float32)) > 200, utt
            assert np.abs(x).max() < 32767, utt  # no clipping


@pytest.mark.slow
@needs_engines
def test_cli_makes_a_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pasu.cli import main

    assert main(["data", "synth", "--list-engines"]) == 0
    assert "espeak-ng" in capsys.readouterr().out
    out = tmp_path / "cli"
    args = [
        "data",
        "synth",
        "--out",
        str(out),
        "--per-split",
        "1",
        "--jobs",
        "1",
        "--no-progress",
        "--splits",
        "train,test_hard",
        "--format",
        "wav",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["audio", "test_hard", "train"]
    wav = next((out / "audio" / "train").iterdir())
    assert wav.suffix == ".wav" and sf.info(wav).samplerate == 16000
    assert main(args) == 2  # exists: refuses without --overwrite
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.slow
def test_text_variety_recombines_train_only_and_never_leaks_a_heldout_sentence(
    grammar: Grammar, tmp_path: Path
) -> None:
    base = SynthOptions(out_dir=tmp_path, train=1200, dev=100, test_voices=100, test_hard=100, calib=100)
    plain = plan_corpus(base, grammar, ENGINES)
    varied = plan_corpus(replace(base, text_variety=0.5), grammar, ENGINES)
    changed = [(a, b) for a, b in zip(plain["train"], varied["train"], strict=True) if a.text != b.text]
    assert 0.4 * 1200 < len(changed) < 0.6 * 1200
    vocab = {w for v in grammar.fillers.values() for s in v for w in s.split()}
    for a, b in changed:  # the same utterance but for its words: voice, augmentation, intent
        assert (a.utt_id, a.voice, a.aug, a.intent) == (b.utt_id, b.voice, b.aug, b.intent)
        assert WORDS.match(b.text) and not grammar.heldout_match(b.text), b.text
        literal = {w for t in grammar.pool(b.intent, False) for s in grammar.surfaces(t) for w in s.split()}
        assert set(b.text.split()) <= vocab | literal, b.text  # the intent's own words only
    # most of them are sentences no template makes
    novel = [b for _, b in changed if not grammar.match(b.text)]
    assert len(novel) > 0.7 * len(changed)
    for split in ("dev", "test_voices", "test_hard", "calib"):
        assert [p.text for p in varied[split]] == [p.text for p in plain[split]], split
    with pytest.raises(ValueError):
        SynthOptions(out_dir=tmp_path, text_variety=1.5)


def test_options_reject_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SynthOptions(out_dir=tmp_path, splits=("train", "bogus"))
    with pytest.raises(ValueError):
        SynthOptions(out_dir=tmp_path, audio_format="mp3")
    opts = SynthOptions(out_dir=tmp_path).with_per_split(3)
    assert [opts.size(s) for s in SPLITS] == [3, 3, 3, 3, 3]
    assert replace(opts, train=5).size("train") == 5
