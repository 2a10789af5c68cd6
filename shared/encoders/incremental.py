"""Incremental front part of an ESPnet ASR model, for pilot inference.

:class:`IncrementalEncoder` takes 16 kHz audio in chunks of any size.  For a
model whose encoder is a :class:`~pasu.encoders.late.LateContextEncoder`
(with ESPnet's ``DefaultFrontend`` and no or a ``GlobalMVN`` normalizer), each
``feed`` runs STFT + log-mel + normalization, the conv2d subsampling and the
local blocks on the new audio only; ``encode()`` then runs only the attention
blocks over the cached local output plus the few pending tail frames, computed
as if the audio ended now.  The result equals ``model.encode`` of the audio so
far.  Any other model gets the same interface in "full" mode: audio is
buffered and ``encode()`` re-runs ``model.encode`` (correct, no gain).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.espnet_model import ESPnetASRModel
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.layers.global_mvn import GlobalMVN
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from pasu.audio import min_encodable_samples
from pasu.encoders.late import LateContextEncoder, subsampling_convs
from pasu.encoders.local_block import LocalBlock
from pasu.encoders.stages import LocalBlockStage, StftFeatureStage, SubsamplingStage
from pasu.locks import forward_lock

logger = logging.getLogger(__name__)

Audio = np.ndarray | torch.Tensor


class NotIncrementalError(ValueError):
    """The model cannot be run incrementally (and fallback is disabled)."""


@dataclass
class IncrementalOptions:
    """How to run the model.

    Attributes:
        fallback: If the model cannot stream (stock encoder, utterance-level
            normalization, unknown frontend), recompute everything at
            ``encode()`` instead of raising :class:`NotIncrementalError`.
    """

    fallback: bool = True


@dataclass
class IncrementalStats:
    """Counters that show the work is incremental (see the tests)."""

    samples: int = 0
    feeds: int = 0
    encodes: int = 0
    feed_seconds: float = 0.0
    encode_seconds: float = 0.0
    #: frames each local block finalized in ``feed`` (each exactly once)
    local_frames_pushed: list[int] = field(default_factory=list)
    #: frames each local block recomputed in the last ``encode`` (tail only)
    local_frames_peeked: list[int] = field(default_factory=list)


def why_not_incremental(model: torch.nn.Module) -> str | None:
    """Reason ``model`` cannot run incrementally, or None if it can."""
    if not isinstance(model.encoder, LateContextEncoder):
        return f"encoder {type(model.encoder).__name__} has no local blocks"
    if not isinstance(model.frontend, DefaultFrontend) or model.frontend.stft is None:
        return f"frontend {type(model.frontend).__name__} is not an STFT DefaultFrontend"
    enh = model.frontend.frontend
    if enh is not None and (enh.use_wpe or enh.use_beamformer):
        return "frontend uses WPE/beamforming (utterance-level)"
    if model.normalize is not None and not isinstance(model.normalize, GlobalMVN):
        return (
            f"normalize {type(model.normalize).__name__} is not frame-wise "
            "(utterance-level statistics need the whole utterance)"
        )
    if getattr(model, "preencoder", None) is not None:
        return "a preencoder is not supported"
    return None


class IncrementalEncoder:
    """Feed audio chunks, get the encoder output for all audio so far.

    Args:
        model: An ESPnet ``ESPnetASRModel`` in eval mode.
        options: :class:`IncrementalOptions`.

    Not thread-safe: one instance per utterance stream (``reset()`` to reuse).
    """

    def __init__(self, model: torch.nn.Module, options: IncrementalOptions | None = None) -> None:
        if model.training:
            raise ValueError("IncrementalEncoder needs the model in eval mode")
        self.model = model
        self.options = options or IncrementalOptions()
        reason = why_not_incremental(model)
        if reason is not None:
            if not self.options.fallback:
                raise NotIncrementalError(reason)
            logger.info("whole-utterance mode: %s", reason)
        self.mode = "full" if reason else "incremental"
        self.device = next(model.parameters()).device
        self.reset()

    def reset(self) -> None:
        """Start a new utterance."""
        self._samples: list[torch.Tensor] = []  # full mode only
        self._local: list[torch.Tensor] = []  # final local-block output
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None
        self._finished = False
        self.stats = IncrementalStats()
        if self.mode == "incremental":  # why_not_incremental() checked these types
            encoder = cast(LateContextEncoder, self.model.encoder)
            frontend = cast(DefaultFrontend, self.model.frontend)
            self._stft = StftFeatureStage(frontend, cast(AbsNormalize | None, self.model.normalize))
            self._embed = SubsamplingStage(encoder.embed, subsampling_convs(encoder.embed))
            self._blocks = [LocalBlockStage(cast(LocalBlock, b)) for b in encoder.local_blocks]

    @property
    def num_samples(self) -> int:
        return self.stats.samples

    @torch.inference_mode()
    def feed(self, chunk: Audio) -> None:
        """Add a chunk of 16 kHz float32 mono samples (any length, 1-D)."""
        if self._finished:
            raise RuntimeError("feed() after finish(); call reset() first")
        start = time.perf_counter()
        x = torch.as_tensor(chunk, dtype=torch.float32).to(self.device).reshape(-1)
        self.stats.samples += x.numel()
        self.stats.feeds += 1
        if x.numel() == 0:
            return
        self._cached = None
        if self.mode == "full":
            self._samples.append(x)
        else:
            y = self._embed.push(self._stft.push(x))
            for stage in self._blocks:
                y = stage.push(y)
            if y.size(1) > 0:
                self._local.append(y)
        self.stats.feed_seconds += time.perf_counter() - start

    @torch.inference_mode()
    def encode(self, final: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output of all audio so far, as ``ESPnetASRModel.encode``.

        Returns ``(encoder_out (1, T, D), encoder_out_lens (1,))``.  When the
        audio is too short for the subsampling (where ``model.encode`` raises
        ``TooShortUttError``), returns T = 0.  ``final=True`` is ``finish()``.
        """
        if final:
            self._finished = True
        if self._cached is not None:
            return self._cached
        start = time.perf_counter()
        out = self._encode_full() if self.mode == "full" else self._encode_late()
        if out is None:
            dim = cast(AbsEncoder, self.model.encoder).output_size()
            out = (
                torch.zeros(1, 0, dim, device=self.device),
                torch.zeros(1, dtype=torch.long, device=self.device),
            )
        self._cached = out
        self.stats.encodes += 1
        self.stats.encode_seconds += time.perf_counter() - start
        return out

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """End of utterance: the final encoder output; no more ``feed``."""
        return self.encode(final=True)

    def _encode_full(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._samples:
            return None
        speech = torch.cat(self._samples)
        self._samples = [speech]
        if speech.numel() < min_encodable_samples(self.model):
            return None
        try:
            with forward_lock(self.model):
                return cast(ESPnetASRModel, self.model).encode(
                    speech[None], torch.tensor([speech.numel()], device=self.device)
                )
        except TooShortUttError as exc:
            logger.debug("too little audio to encode yet: %s", exc)
            return None

    def _encode_late(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        # Tail: frames not final yet, computed as if the audio ended now.
        tail = self._embed.peek(self._stft.peek(torch.zeros(0, device=self.device)))
        for stage in self._blocks:
            tail = stage.peek(tail)
        self.stats.local_frames_pushed = [s.frames_pushed for s in self._blocks]
        self.stats.local_frames_peeked = [s.frames_peeked for s in self._blocks]
        for s in self._blocks:
            s.frames_peeked = 0
        if self._local and len(self._local) > 1:
            self._local = [torch.cat(self._local, 1)]
        local = torch.cat(self._local + [tail], 1) if self._local else tail
        frames = local.size(1)
        if frames == 0:
            return None
        masks = torch.ones(1, 1, frames, dtype=torch.bool, device=self.device)
        with forward_lock(self.model):
            out = cast(LateContextEncoder, self.model.encoder).forward_attention(local, masks)
        lens = torch.tensor([frames], device=self.device)
        postencoder = getattr(self.model, "postencoder", None)
        if postencoder is not None:
            out, lens = postencoder(out, lens)
        return out, lens
