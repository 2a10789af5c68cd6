"""The SLURP-style command grammar: intents, templates, slot fillers.

The grammar lives in ``pasu/resources/slu/grammar.yaml`` (syntax described
there); the intent inventory in ``pasu/resources/slu/intents.tsv``. This module
loads both, checks that they agree, expands templates into sentences and splits
each intent's templates into a training part and a held-out part (about 15%,
used only by the ``test_hard`` split).

The held-out choice depends only on the template text (a fixed hash), never on
the synthesis seed, so every corpus made from one grammar holds out the same
templates.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger(__name__)

_SLOT = re.compile(r"\{([a-z_]+)\}")
_GROUP = re.compile(r"\(([^()\[\]]*)\)|\[([^()\[\]]*)\]")
_WORDS = re.compile(r"^[a-z]+( [a-z]+)*$")

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)


def spell_number(n: int) -> str:
    """0 <= n < 1e6 as English words, no hyphens: 81 -> 'eighty one'."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        head = _ONES[hundreds] + " hundred"
        return head if rest == 0 else f"{head} and {spell_number(rest)}"
    thousands, rest = divmod(n, 1000)
    head = spell_number(thousands) + " thousand"
    if rest == 0:
        return head
    return f"{head} {'and ' if rest < 100 else ''}{spell_number(rest)}"


def spell_ordinal(n: int) -> str:
    """1 -> 'first', 21 -> 'twenty first', 30 -> 'thirtieth'."""
    words = spell_number(n).split()
    last = words[-1]
    if last in _ORD_IRREGULAR:
        words[-1] = _ORD_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def generated_fillers() -> dict[str, list[str]]:
    """Filler classes made by code: times, dates, numbers, durations."""
    hours = [spell_number(h) for h in range(1, 13)]
    times: list[str] = ["noon", "midnight"]
    for h in hours:
        times += [
            h,
            f"{h} am",
            f"{h} pm",
            f"{h} in the morning",
            f"{h} in the evening",
            f"half past {h}",
            f"quarter past {h}",
            f"quarter to {h}",
        ]
        for m in (5, 10, 15, 20, 30, 45):
            minute = "oh five" if m == 5 else spell_number(m)
            times.append(f"{h} {minute}")
            times.append(f"{h} {minute} {'am' if m % 10 else 'pm'}")
    ordinals = [spell_ordinal(d) for d in range(1, 32)]
    dates = [
        "today",
        "tonight",
        "tomorrow",
        "tomorrow morning",
        "tomorrow night",
        "this evening",
        "this afternoon",
        "this weekend",
        "next week",
        "the day after tomorrow",
        "next weekend",
        "later today",
    ]
    for day in WEEKDAYS:
        dates += [f"on {day}", f"next {day}", f"this {day}"]
    for month in MONTHS:
        for o in ordinals:
            dates += [f"on the {o} of {month}", f"on {month} {o}"]
    numbers = [spell_number(n) for n in range(1, 101)]
    numbers += [
        spell_number(n)
        for n in (120, 144, 150, 200, 250, 256, 300, 365, 400, 500, 625, 750, 999, 1000, 1200, 2500, 10000)
    ]
    durations = ["half an hour", "an hour", "a minute", "ninety minutes"]
    durations += [f"{spell_number(n)} minutes" for n in (2, 5, 10, 15, 20, 25, 30, 40, 45)]
    durations += [f"{spell_number(n)} hours" for n in (2, 3, 4)]
    durations += [f"{spell_number(n)} seconds" for n in (10, 30)]
    return {
        "time": times,
        "date": dates,
        "weekday": list(WEEKDAYS),
        "month": list(MONTHS),
        "ordinal": ordinals,
        "number": numbers,
        "small_number": hours,
        "duration": durations,
    }


@dataclass(frozen=True)
class IntentInfo:
    """One row of intents.tsv."""

    name: str
    slots: tuple[str, ...]
    meaning: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Template:
    """A template of one intent; ``index`` is its position in grammar.yaml."""

    intent: str
    index: int
    pattern: str
    heldout: bool

    @property
    def id(self) -> str:
        return f"{self.intent}/{self.index:03d}"


@dataclass(frozen=True)
class Sentence:
    intent: str
    text: str  # the transcript: lowercase words, no punctuation, numbers spelled out
    template: str  # Template.id


def _read_spec(path: Path) -> dict:
    """A grammar YAML; ``base: FILE`` (relative to it) supplies the fillers and
    speak_as it does not define itself, so a grammar of other templates (e.g.
    grammar_novel.yaml) shares the slot values without copying them."""
    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f) or {}
    if "base" not in spec:
        return spec
    base = _read_spec(path.parent / spec["base"])
    for key in ("fillers", "speak_as"):
        spec[key] = {**(base.get(key) or {}), **(spec.get(key) or {})}
    return spec


def resource_path(name: str) -> Path:
    """A file under pasu/resources/slu/ (this package's own copy)."""
    return Path(str(resources.files("pasu") / "resources" / "slu" / name))


def read_intents(path: Path | None = None) -> list[IntentInfo]:
    path = path or resource_path("intents.tsv")
    rows: list[IntentInfo] = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["intent", "slots"]:
            raise ValueError(f"{path}: unexpected header {header}")
        for line in f:
            if not line.strip():
                continue
            name, slots, meaning, examples = line.rstrip("\n").split("\t")
            rows.append(
                IntentInfo(
                    name=name.strip(),
                    slots=() if slots.strip() == "-" else tuple(s.strip() for s in slots.split(";")),
                    meaning=meaning.strip(),
                    examples=tuple(e.strip() for e in examples.split("|")),
                )
            )
    return rows


def _stable_hash(s: str) -> int:
    return int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:8], "big")


def _group_alternatives(m: re.Match[str]) -> list[str]:
    if m.group(1) is not None:
        return m.group(1).split("|")
    return [m.group(2), ""]


def _squash(s: str) -> str:
    return " ".join(s.split())


@dataclass
class Grammar:
    """Intents, templates and fillers; sample or enumerate sentences."""

    intents: list[IntentInfo]
    templates: dict[str, list[Template]]
    fillers: dict[str, list[str]]
    speak_as: dict[str, str] = field(default_factory=dict)
    heldout_fraction: float = 0.15
    _regex: dict[str, re.Pattern[str]] | None = field(default=None, repr=False, compare=False)
    _literals: dict[str, frozenset[str]] | None = field(default=None, repr=False, compare=False)

    # ---- loading -------------------------------------------------------------
    @classmethod
    def load(cls, grammar_path: Path | None = None, intents_path: Path | None = None) -> Grammar:
        grammar_path = Path(grammar_path or resource_path("grammar.yaml"))
        spec = _read_spec(grammar_path)
        intents = read_intents(intents_path)
        fillers = generated_fillers()
        for name, values in (spec.get("fillers") or {}).items():
            if name in fillers:
                raise ValueError(f"filler class {name!r} is generated; do not redefine it")
            fillers[name] = [_squash(str(v)) for v in values]
        frac = float(spec.get("heldout_fraction", 0.15))
        templates: dict[str, list[Template]] = {}
        for intent, patterns in (spec.get("intents") or {}).items():
            patterns = [_squash(str(p)) for p in patterns]
            n_held = max(1, round(frac * len(patterns)))
            order = sorted(range(len(patterns)), key=lambda i: _stable_hash(f"{intent}\t{patterns[i]}"))
            held = set(order[:n_held])
            templates[intent] = [Template(intent, i, p, i in held) for i, p in enumerate(patterns)]
        g = cls(intents, templates, fillers, dict(spec.get("speak_as") or {}), frac)
        g.validate()
        return g

    def validate(self) -> None:
        names = [i.name for i in self.intents]
        if len(set(names)) != len(names):
            raise ValueError("duplicate intents in intents.tsv")
        missing = sorted(set(names) - set(self.templates))
        extra = sorted(set(self.templates) - set(names))
        if missing or extra:
            raise ValueError(f"grammar/intents mismatch: missing={missing} extra={extra}")
        for temps in self.templates.values():
            for t in temps:
                if _GROUP.sub("", t.pattern).count("(") or _GROUP.sub("", t.pattern).count("["):
                    raise ValueError(f"{t.id}: unbalanced or nested group in {t.pattern!r}")
                for slot in _SLOT.findall(t.pattern):
                    if slot not in self.fillers:
                        raise ValueError(f"{t.id}: unknown filler class {{{slot}}}")
        for name, values in self.fillers.items():
            for v in values:
                if not _WORDS.match(v):
                    raise ValueError(f"filler {name}: {v!r} is not lowercase words")

    # ---- queries ---------------------------------------------------------------
    @property
    def intent_names(self) -> list[str]:
        return [i.name for i in self.intents]

    def pool(self, intent: str, heldout: bool) -> list[Template]:
        return [t for t in self.templates[intent] if t.heldout == heldout]

    def template_counts(self) -> dict[str, tuple[int, int]]:
        """intent -> (training templates, held-out templates)."""
        return {i: (len(self.pool(i, False)), len(self.pool(i, True))) for i in self.intent_names}

    def tts_text(self, transcript: str) -> str:
        """What the engine is asked to say for a transcript (see speak_as)."""
        return " ".join(self.speak_as.get(w, w) for w in transcript.split())

    # ---- expansion ---------------------------------------------------------------
    def sample(self, rng: np.random.Generator, intent: str, heldout: bool = False) -> Sentence:
        """One random sentence of `intent` from the training (or held-out) templates."""
        pool = self.pool(intent, heldout)
        t = pool[int(rng.integers(len(pool)))]

        def pick_group(m: re.Match[str]) -> str:
            alts = _group_alternatives(m)
            return alts[int(rng.integers(len(alts)))]

        def pick_slot(m: re.Match[str]) -> str:
            values = self.fillers[m.group(1)]
            return values[int(rng.integers(len(values)))]

        text = _SLOT.sub(pick_slot, _GROUP.sub(pick_group, t.pattern))
        return Sentence(intent, _squash(text), t.id)

    def vary(self, rng: np.random.Generator, sentence: Sentence, tries: int = 10) -> Sentence:
        """A sentence of the same intent in an order no single template gives.

        Why: with ~26 training templates per intent the decoder learns the
        templates as a language model and, on a held-out template, completes
        the audio into a training sentence (test_hard: ~42% intent accuracy
        against 81% for the same voices and noise on training templates). A
        *crossover* (this sentence's head, another training sentence's tail,
        same intent) or a dropped word keeps the intent's words and label but
        breaks the memorised word order, so the audio has to decide. Never a
        sentence a held-out template makes (that would leak test_hard into
        training); after `tries` such draws the sentence comes back unchanged.
        """
        words = sentence.text.split()
        for _ in range(tries):
            if len(words) > 3 and rng.random() < 0.25:
                k = int(rng.integers(len(words)))
                new, tid = words[:k] + words[k + 1 :], f"{sentence.template}-w{k}"
            else:
                other = self.sample(rng, sentence.intent)
                tail = other.text.split()
                i = int(rng.integers(1, len(words) + 1))
                j = int(rng.integers(0, len(tail)))
                new, tid = words[:i] + tail[j:], f"{sentence.template}+{other.template}"
            text = " ".join(new)
            if len(new) >= 2 and text != sentence.text and not self.heldout_match(text):
                return Sentence(sentence.intent, text, tid)
        return sentence

    def heldout_match(self, sentence: str) -> bool:
        """Whether a held-out template can produce `sentence`."""
        return bool(self.match(sentence, heldout=True))

    def surfaces(self, template: Template) -> list[str]:
        """The template with every group expanded (slots left in)."""
        pieces: list[list[str]] = []
        pos = 0
        for m in _GROUP.finditer(template.pattern):
            pieces.append([template.pattern[pos : m.start()]])
            pieces.append(_group_alternatives(m))
            pos = m.end()
        pieces.append([template.pattern[pos:]])
        return [_squash("".join(p)) for p in itertools.product(*pieces)]

    def expand(self, template: Template, limit: int | None = None) -> Iterator[str]:
        """Sentences of a template, in a fixed order (at most `limit`)."""

        def gen() -> Iterator[str]:
            for surface in self.surfaces(template):
                slots = _SLOT.findall(surface)
                frame = _SLOT.sub("{}", surface)
                for values in itertools.product(*(self.fillers[s] for s in slots)):
                    yield _squash(frame.format(*values))

        return itertools.islice(gen(), limit)

    def n_expansions(self, template: Template) -> int:
        """How many (not necessarily distinct) sentences a template expands to."""
        return sum(math.prod(len(self.fillers[s]) for s in _SLOT.findall(sf)) for sf in self.surfaces(template))

    def match(self, sentence: str, heldout: bool | None = None) -> list[Template]:
        """The templates that can produce `sentence` (a tiny grammar parser);
        heldout=True/False looks only among the held-out/training ones."""
        if self._regex is None:
            self._regex = {}
        if self._literals is None:  # each template's obligatory literal words
            self._literals = {
                t.id: frozenset(_SLOT.sub(" ", _GROUP.sub(" ", t.pattern)).split())
                for temps in self.templates.values()
                for t in temps
            }
        words = set(sentence.split())
        found = []
        for temps in self.templates.values():
            for t in temps:
                if heldout is not None and t.heldout != heldout:
                    continue
                if not self._literals[t.id] <= words:  # cheap prefilter
                    continue
                if t.id not in self._regex:
                    self._regex[t.id] = _template_regex(t.pattern, self.fillers)
                if self._regex[t.id].match(sentence):
                    found.append(t)
        return found

    def distinct_sentences(self, heldout: bool | None = False, per_template: int = 400) -> set[str]:
        """Distinct sentences from the chosen templates (each capped at per_template).

        heldout=None takes every template. A lower bound on what the grammar makes.
        """
        out: set[str] = set()
        for temps in self.templates.values():
            for t in temps:
                if heldout is None or t.heldout == heldout:
                    out.update(self.expand(t, per_template))
        return out


def _template_regex(pattern: str, fillers: dict[str, list[str]]) -> re.Pattern[str]:
    def slot(m: re.Match[str]) -> str:
        return "(?:" + "|".join(re.escape(v) for v in sorted(fillers[m.group(1)], key=len, reverse=True)) + ")"

    def piece(text: str) -> str:
        out, pos = [], 0
        for m in _SLOT.finditer(text):
            out.append(re.escape(text[pos : m.start()]))
            out.append(slot(m))
            pos = m.end()
        out.append(re.escape(text[pos:]))
        return "".join(out)

    parts, pos = [], 0
    for m in _GROUP.finditer(pattern):
        parts.append(piece(pattern[pos : m.start()]))
        parts.append("(?:" + "|".join(piece(a) for a in _group_alternatives(m)) + ")")
        pos = m.end()
    parts.append(piece(pattern[pos:]))
    # an empty group leaves two spaces in the pattern and one in the sentence
    body = re.sub(r"(?:\\ )+", " *", "".join(parts))
    return re.compile(f"^ *{body} *$")


def write_nlsyms(path: Path, intents: Sequence[str]) -> None:
    """The intent labels, one a line: ESPnet's non_linguistic_symbols file."""
    path.write_text("".join(f"{i}\n" for i in intents), encoding="utf-8")
