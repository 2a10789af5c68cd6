"""Two models' hypotheses on one data dir, utterance by utterance.

A pair is worth offloading only where the cloud is right and the device is not;
corpus accuracies hide how many such utterances there are and whether the gap
is more than chance. :func:`compare` counts the utterances only one side gets
right (with an exact two-sided sign test on them) and breaks intent accuracy
down per voice (``utt2voice``, else ``utt2spk``): the model cards' "where the
two sides differ" and per-voice tables. The hypotheses are ``pasu eval --hyps``
files, so no model runs here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pasu.audio import read_scp
from pasu.tools.scoring import correct


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided binomial sign test of ``wins`` vs ``losses`` (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Comparison:
    """Model A against model B on the same utterances."""

    names: tuple[str, str]
    utterances: int
    only_a: int  # A's intent right, B's wrong
    only_b: int
    accuracy: tuple[float, float]
    per_voice: dict[str, tuple[int, float, float]]  # voice -> (utterances, accuracy A, accuracy B)

    @property
    def p_value(self) -> float:
        return sign_test_p(self.only_a, self.only_b)

    def summary(self) -> dict:
        a, b = self.names
        return {
            "utterances": self.utterances,
            f"intent_acc_{a}": round(self.accuracy[0], 4),
            f"intent_acc_{b}": round(self.accuracy[1], 4),
            f"only_{a}": self.only_a,
            f"only_{b}": self.only_b,
            "sign_test_p": round(self.p_value, 4),
            "per_voice": {
                v: {"utterances": n, a: round(x, 4), b: round(y, 4)} for v, (n, x, y) in self.per_voice.items()
            },
        }

    def table(self) -> str:
        a, b = self.names
        lines = [
            f"{self.utterances} utterances: intent accuracy {a} {100 * self.accuracy[0]:.1f}%, "
            f"{b} {100 * self.accuracy[1]:.1f}%; right only on {a}: {self.only_a}, "
            f"only on {b}: {self.only_b} (sign test p = {self.p_value:.3f})",
            "",
            f"| voice | utterances | {a} | {b} |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {v} | {n} | {100 * x:.1f}% | {100 * y:.1f}% |" for v, (n, x, y) in self.per_voice.items()]
        return "\n".join(lines)


def compare(data_dir: Path, hyps: dict[str, Path]) -> Comparison:
    """Compare two hypothesis files (``uttid text`` lines) against ``data_dir/text``.

    Only utterances both files cover count; a file that covers none is an error
    (most likely the wrong data dir)."""
    if len(hyps) != 2:
        raise ValueError(f"compare needs exactly two hypothesis files, got {len(hyps)}")
    refs = read_scp(data_dir / "text")
    (name_a, path_a), (name_b, path_b) = hyps.items()
    ha, hb = read_scp(path_a), read_scp(path_b)
    utts = sorted(set(ha) & set(hb) & set(refs))
    if not utts:
        raise ValueError(f"{path_a} and {path_b} share no utterance with {data_dir / 'text'}")
    voices_file = next((data_dir / f for f in ("utt2voice", "utt2spk") if (data_dir / f).is_file()), None)
    voices = read_scp(voices_file) if voices_file else {}
    right_a = {u: correct(ha[u], refs[u]) for u in utts}
    right_b = {u: correct(hb[u], refs[u]) for u in utts}
    per_voice: dict[str, tuple[int, float, float]] = {}
    for voice in sorted({voices.get(u, "all") for u in utts}):
        mine = [u for u in utts if voices.get(u, "all") == voice]
        per_voice[voice] = (
            len(mine),
            sum(right_a[u] for u in mine) / len(mine),
            sum(right_b[u] for u in mine) / len(mine),
        )
    return Comparison(
        names=(name_a, name_b),
        utterances=len(utts),
        only_a=sum(right_a[u] and not right_b[u] for u in utts),
        only_b=sum(right_b[u] and not right_a[u] for u in utts),
        accuracy=(sum(right_a.values()) / len(utts), sum(right_b.values()) / len(utts)),
        per_voice=per_voice,
    )
