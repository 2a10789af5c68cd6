"""Stock ESPnet inference on the same model and settings: the baseline pasu is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pasu.decoding.options import DecodingOptions
from pasu.models import LoadedModel


@dataclass(frozen=True)
class ReferenceHypothesis:
    yseq: list[int]
    text: str
    score: float
    scores: dict[str, float]


def espnet_speech2text(model: LoadedModel, options: DecodingOptions, device: str = "cpu"):
    """``espnet2.bin.asr_inference.Speech2Text`` (BatchBeamSearch) with pasu's options.

    The CTC window is off (``ctc_window_margin=0``): pasu's default is ESPnet's
    exact CTC prefix score, and the comparison must be like for like. The model's own
    LM (``model.lm``) joins with ``options.lm_weight``, as it does in pasu's search.
    """
    from espnet2.bin.asr_inference import Speech2Text

    if options.pre_beam_ratio != 1.5:
        raise ValueError("Speech2Text has a fixed pre_beam_ratio of 1.5")
    lm = {}
    if model.lm is not None and options.lm_weight > 0:
        lm = {"lm_train_config": model.lm.files.config, "lm_file": model.lm.files.weights}
    return Speech2Text(
        asr_train_config=model.resolved_config_path(),
        asr_model_file=model.files.weights,
        device=device,
        **lm,
        beam_size=options.beam_size,
        ctc_weight=options.ctc_weight,
        lm_weight=options.lm_weight if lm else 0.0,
        penalty=options.penalty,
        maxlenratio=options.maxlenratio,
        minlenratio=options.minlenratio,
        nbest=options.nbest,
        normalize_length=options.normalize_length,
        ctc_window_margin=0,
    )


def espnet_nbest(speech2text, speech: np.ndarray) -> list[ReferenceHypothesis]:
    out = []
    for text, _tokens, _ids, hyp in speech2text(speech):
        out.append(
            ReferenceHypothesis(
                yseq=hyp.yseq.tolist(),
                text=text or "",
                score=float(hyp.score),
                scores={k: float(v) for k, v in hyp.scores.items()},
            )
        )
    return out
