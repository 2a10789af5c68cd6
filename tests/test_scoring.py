"""pasu.tools.scoring: the one definition of intent accuracy and WER every tool reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pasu.audio import read_scp
from pasu.resources import EVAL_DIR
from pasu.tools import scoring

REFS = ["alarm_set wake me up", "weather_query is it raining"]


def test_intent_is_the_label_split_intent_finds() -> None:
    assert scoring.intent("alarm_set wake me up") == "alarm_set"
    assert scoring.intent("wake me up") == "wake" and scoring.intent("") is None  # SLURP: the first word
    assert scoring.transcript("alarm_set  wake   me") == "wake me"
    assert scoring.labelled(REFS) and not scoring.labelled(["wake me up", *REFS]) and not scoring.labelled([])


def test_a_hypothesis_without_a_label_is_wrong_and_keeps_its_words_for_wer() -> None:
    assert not scoring.correct("wake me up", "alarm_set wake me up")
    assert not scoring.correct("", "alarm_set wake me up")
    # the unlabelled hypothesis keeps all its words as transcript: 1 insertion over 3 reference words
    assert scoring.wer(["the wake me up"], ["alarm_set wake me up"]) == pytest.approx(1 / 3)


def test_without_labels_there_is_no_intent_accuracy_and_wer_counts_every_word() -> None:
    got = scoring.accuracy(["wake me", "is it raining"], ["wake me up", "is it raining"])
    assert got == {"intent_acc": None, "wer": pytest.approx(1 / 6)}
    assert scoring.correct("is  it raining", "is it raining", with_intent=False)


def test_accuracy_skips_missing_references_and_scores_empty_answers() -> None:
    assert scoring.accuracy(["x"], [None]) == {"intent_acc": None, "wer": None}
    got = scoring.accuracy(["alarm_set", "weather_query is it", "anything"], [REFS[0], REFS[1], None])
    assert got["intent_acc"] == 1.0
    assert got["wer"] == pytest.approx(4 / 6)  # 3 deleted of 3, then 1 of 3
    assert scoring.accuracy(["alarm_set"], ["alarm_set"]) == {"intent_acc": 1.0, "wer": 0.0}  # both empty


def test_summary_is_what_a_model_card_stores() -> None:
    hyps = {"a": "alarm_set wake me", "b": "alarm_query is it raining"}
    assert scoring.summary(hyps, dict(zip("ab", REFS, strict=True))) == {
        "intent_acc": 0.5,
        "wer": 0.1667,
        "utterances": 2,
    }


def test_the_latency_bench_scores_the_same() -> None:
    """`pasu bench latency` keeps its own ``accuracy`` until it switches to this module: same
    figures on the committed benchmark's real decodes, so the switch is one import."""
    from pasu.tools.bench import latency

    bench = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "latency_test_hard200.json"
    rows = json.loads(bench.read_text())["rows"]
    refs = read_scp(EVAL_DIR / "text")
    summary = json.loads(bench.read_text())["summary"]
    for side in ("espnet", "pasu"):
        hyps, rs = [r[side]["text"] for r in rows], [refs.get(r["utt"]) for r in rows]
        assert scoring.accuracy(hyps, rs) == latency.accuracy(hyps, rs)
        assert scoring.accuracy(hyps, rs)["intent_acc"] == summary[f"intent_acc_{side}"]
        assert scoring.accuracy(hyps, rs)["wer"] == pytest.approx(summary[f"wer_{side}"])
