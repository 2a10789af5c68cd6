"""SLURP-style outputs: the model writes the intent label first, then the transcript."""

from __future__ import annotations

import re
from functools import lru_cache

from pasu.resources import ROOT

_LABEL = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")  # scenario_action, e.g. alarm_set


@lru_cache(maxsize=1)
def known_intents() -> frozenset[str]:
    """The intent inventory pasu's default models recognize (resources/slu/intents.tsv)."""
    path = ROOT / "slu" / "intents.tsv"
    if not path.is_file():
        return frozenset()
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return frozenset(r.split("\t", 1)[0] for r in rows if r.strip())


def split_intent(text: str) -> tuple[str | None, str]:
    """(intent label or None, transcript). A first word is a label if it is a known intent,
    or looks like one (``scenario_action``) — models trained on other inventories work too."""
    first, _, rest = text.strip().partition(" ")
    if first and (first in known_intents() or _LABEL.match(first)):
        return first, rest.strip()
    return None, text


def join_intent(intent: str | None, transcript: str) -> str:
    """The model's own output line back from the wire's separate fields: the inverse of
    :func:`split_intent` (the API carries the intent apart from the transcript)."""
    return f"{intent} {transcript}".strip() if intent else transcript
