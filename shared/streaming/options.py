"""Streaming settings: one switch per PASU technique, so each can be measured alone."""

from __future__ import annotations

from dataclasses import dataclass, replace

TECHNIQUES = ("late_context", "pilots", "beam_collapse", "beam_termination", "ctc_leap")
LABEL_RESCORE_FINAL = ("always", "unsettled", "never")


@dataclass(frozen=True)
class StreamingOptions:
    """How a :class:`~pasu.streaming.session.StreamingSession` spends work during and after speech.

    With every technique off the session buffers audio and, at ``finalize()``,
    runs exactly the whole-utterance recognizer (stock behaviour).
    """

    # 1. late contextualization: frontend, subsampling and local encoder blocks
    #    run on each chunk as it arrives; only the attention blocks run late.
    late_context: bool = True
    # 2. pilot inference: decode the partial input every `pilot_period_s` of new audio.
    pilots: bool = True
    pilot_period_s: float = 0.16
    pilot_beam_size: int = 10
    pilot_nbest: int = 2
    # 3. beam collapse (pasu.streaming.commit): the next pilot and the final search
    #    start from the prefix the last `collapse_pilots` pilots agree on (and, if
    #    `collapse_margin` > 0, only when the latest one's n-best margin is at least
    #    that), less `collapse_holdback` tokens at its end, and only as far as the
    #    audio heard now still confirms it (`collapse_confirm`); the final search
    #    with `collapse_beam_size` beams, its seed confirmed with a tolerance of
    #    `collapse_final_tolerance` nats per token. Defaults chosen by measurement:
    #    docs/benchmarks.md.
    beam_collapse: bool = True
    collapse_pilots: int = 1
    collapse_holdback: int = 0
    collapse_margin: float = 0.0
    collapse_beam_size: int = 10
    collapse_confirm: bool = True
    collapse_confirm_margin: float = 0.0  # nats a confirmed token must beat the runner-up by
    collapse_final_tolerance: float = 1.5  # nats a final seed token may trail the joint best by
    # Guards for an SLU model's intent label (the seed's first label-like token,
    # pasu.slu.split_intent), which an early pilot guesses and the final search then
    # never revisits. `label_rescore`: a seeded search's best words are scored (decoder
    # + CTC, as the search weighs them) under each of this many other labels whose
    # decoder score at the label is within `label_rescore_window` nats of the committed
    # one, and the best-scoring label wins (0: off). The others are off at 0 / 1
    # (why: CHANGELOG.md). `collapse_ctc_agree`: the final
    # seed is refused where the CTC greedy path leaves it within its first k tokens.
    # `collapse_label_pilots`: the label must be the same in this many pilots in a row.
    # `collapse_label_margin`: a confirmation margin (nats) on the tokens up to the label.
    # Rescoring runs at the final search and/or at each seeded pilot (while the user speaks).
    label_rescore: int = 3
    label_rescore_window: float = 3.0
    label_rescore_pilots: bool = True  # at each seeded pilot (during speech)
    # at the final search (after speech): "always", "never", or "unsettled" (only when
    # the last two pilots' best disagree on the label)
    label_rescore_final: str = "unsettled"
    collapse_ctc_agree: int = 0
    collapse_label_pilots: int = 1
    collapse_label_margin: float = 0.0
    # 4. beam termination: stop once no running hypothesis can beat the n-best
    #    (exact), or once the predicted length (pilots, CTC greedy) plus slack is
    #    reached with a finished hypothesis in hand (approximate).
    beam_termination: bool = True
    termination_slack: int = 2
    # 5. CTC leap: the agreed prefix's CTC forward variables are carried from
    #    pilot to pilot and extended over new frames only.
    ctc_leap: bool = True
    # Memory stays bounded: a segment longer than this is cut by the caller (VAD).
    max_segment_s: float = 20.0

    def __post_init__(self) -> None:
        if self.collapse_final_tolerance < 0:
            raise ValueError(f"collapse_final_tolerance must be >= 0, got {self.collapse_final_tolerance}")
        if self.label_rescore_final not in LABEL_RESCORE_FINAL:
            raise ValueError(
                f"label_rescore_final must be one of {LABEL_RESCORE_FINAL}, not {self.label_rescore_final!r}"
            )

    @classmethod
    def stock(cls) -> StreamingOptions:
        return cls(late_context=False, pilots=False, beam_collapse=False, beam_termination=False, ctc_leap=False)

    @classmethod
    def only(cls, technique: str, base: StreamingOptions | None = None) -> StreamingOptions:
        """One technique on, the others off (ablation). Collapse and leap need pilots.

        The techniques' settings (margins, periods, beams) come from ``base``, so an
        ablation row measures the same configuration as the all-on row.
        """
        if technique not in TECHNIQUES:
            raise ValueError(f"unknown technique {technique!r}; choose from {TECHNIQUES}")
        on = {technique: True}
        if technique in ("beam_collapse", "ctc_leap"):
            on["pilots"] = True
        if technique == "ctc_leap":
            on["beam_collapse"] = True  # the leap carries the collapsed prefix
        return replace(base or cls(), **{t: t in on for t in TECHNIQUES})

    def with_(self, **changes) -> StreamingOptions:
        return replace(self, **changes)
