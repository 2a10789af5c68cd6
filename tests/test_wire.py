"""pasu.wire: the device's message to the cloud, one definition for the agent, tests and benchmarks."""

from __future__ import annotations

import pytest

from pasu.decoding.recognizer import NBestEntry
from pasu.models import token_list_id
from pasu.wire import device_result, duration


def entry(text: str, score: float) -> NBestEntry:
    return NBestEntry(
        text=text, tokens=[], token_ids=[5, 6], score=score, scores={"decoder": -1.0, "ctc": -2.0}, yseq=[]
    )


def test_the_intent_label_travels_apart_from_the_transcript() -> None:
    """hypothesis.proto: ``intent`` holds the label, ``text`` the words after it."""
    msg = device_result(
        [entry("alarm_set wake me up", -3.0), entry("wake me up", -4.0)],
        "dev",
        "8",
        ["<blank>", "a"],
        0.7,
        complete=False,
    )
    first, second = msg.hypotheses
    assert (first.intent, first.text) == ("alarm_set", "wake me up")
    assert (second.intent, second.text) == ("", "wake me up")  # proto3: no label is ""
    assert first.confidence == pytest.approx(0.7) and second.confidence == 0.0
    assert list(first.token_ids) == [5, 6] and first.scores.total == -3.0 and first.scores.ctc == -2.0
    assert first.scores.length_bonus == 0.0  # a scorer the device did not run stays unset
    assert (msg.model.name, msg.model.version, msg.complete) == ("dev", "8", False)
    assert msg.model.token_list_id == token_list_id(["<blank>", "a"])
    assert device_result([], "dev", "8", None, 0.5).model.token_list_id == ""  # the cloud re-tokenizes


def test_the_agent_sends_this_message() -> None:
    from pasu.device import offload

    assert offload.device_result is device_result


def test_duration_is_exact_to_the_nanosecond() -> None:
    assert duration(1.5).ToNanoseconds() == 1_500_000_000
    assert duration(0.0).ToNanoseconds() == 0
