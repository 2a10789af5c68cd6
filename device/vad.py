"""Voice-activity segmentation of a continuous stream (silero or webrtcvad), as events.

The segmenter is incremental: ``push`` takes any chunk and returns the events
it completed — a segment's start, its audio as it arrives, its end — so the
agent can stream a segment into a pilot session (and the cloud) while the user
is still talking, instead of waiting for the segment to close.

Frames are classified by a :class:`FrameClassifier`: the trained Silero VAD
(default; its ONNX model ships inside the ``silero-vad`` wheel, and ``pasu export``
copies it into an export for installs without that package, so nothing is
downloaded; run with ONNX Runtime) or webrtcvad. Why not webrtcvad alone: it calls loud
stationary noise speech and the first frames of every stream speech while it
adapts, which opened segments on noise (issue 28; figures in docs/device.md).
"""

from __future__ import annotations

import importlib.util
import logging
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from pasu.device.config import VadOptions

log = logging.getLogger(__name__)

EventKind = Literal["start", "audio", "end"]


@dataclass(frozen=True)
class VadEvent:
    """``start`` (at = first sample), ``audio`` (int16 samples), or ``end`` (at = end sample)."""

    kind: EventKind
    segment: int  # 0, 1, ... in stream order
    at: int  # absolute sample index in the stream
    audio: np.ndarray | None = None
    cut: bool = False  # end: the segment hit max_segment_s, speech goes on in the next one
    speech_s: float = 0.0  # end: how much of the segment its frames called speech (seconds)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] (or int16) → int16, as webrtcvad and LINEAR16 want it."""
    a = np.asarray(samples)
    if a.dtype == np.int16:
        return a
    return (np.clip(a.astype(np.float32), -1.0, 32767 / 32768) * 32768.0).astype(np.int16)


def _load_webrtcvad():
    try:
        import webrtcvad
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("voice-activity detection needs webrtcvad: pip install webrtcvad-wheels") from e
    return webrtcvad


class FrameClassifier(Protocol):
    """Says whether one frame (int16, ``VadOptions.frame_samples`` long) is speech."""

    def is_speech(self, frame: np.ndarray) -> bool: ...


class WebrtcFrames:
    """webrtcvad's GMM decision per frame."""

    def __init__(self, options: VadOptions) -> None:
        self._vad = _load_webrtcvad().Vad(options.aggressiveness)
        self._rate = options.sample_rate

    def is_speech(self, frame: np.ndarray) -> bool:
        return self._vad.is_speech(frame.tobytes(), self._rate)


# Less speech than this in a whole segment is no command: the segment opens on 200 ms of
# speech-like frames, which music-like tones and short sounds reach (``no_speech``).
MIN_SPEECH_S = 0.5
# A segment whose level moves less than this (level_spread_db) is many voices at once
# (``babble``): one talker's level falls between syllables and words, babble's voices fill
# those gaps. Set on held-out commands in noise; the figures: docs/rejection/README.md.
MIN_LEVEL_SPREAD_DB = 3.8
NOT_SPEECH = ("no_speech", "babble")  # not_speech_reason's verdicts
_LEVEL_FRAME, _LEVEL_HOP = 400, 160  # 25 ms frames every 10 ms (16 kHz)


def level_spread_db(samples: np.ndarray) -> float:
    """The standard deviation (dB) of a segment's frame levels, over the frames within
    30 dB of its loudest (quieter ones are silence around the speech); 0 when too short."""
    x = np.asarray(samples, dtype=np.float64)
    if np.issubdtype(np.asarray(samples).dtype, np.integer):
        x = x / 32768.0
    starts = np.arange(0, max(0, x.size - _LEVEL_FRAME), _LEVEL_HOP)
    if starts.size < 5:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(x, _LEVEL_FRAME)[starts]
    level = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    return float(level[level > level.max() - 30.0].std())


def not_speech_reason(speech_s: float, samples: np.ndarray) -> str | None:
    """The VAD's verdict on a closed segment's audio, or None when it may hold a command:
    ``no_speech`` (less than :data:`MIN_SPEECH_S` of speech frames) or ``babble``
    (a level that never dips, :data:`MIN_LEVEL_SPREAD_DB`)."""
    if speech_s < MIN_SPEECH_S:
        return "no_speech"
    if level_spread_db(samples) < MIN_LEVEL_SPREAD_DB:
        return "babble"
    return None


SILERO_CONTEXT = 64  # samples of the previous frame silero sees before each 512-sample frame


SILERO_FILE = "silero_vad.onnx"  # the model's name in the package and in an export


def silero_model_path(fallback: str | Path | None = None) -> Path:
    """The silero ONNX model: the installed ``silero-vad`` package's (nothing is downloaded),
    else ``fallback`` (the copy ``pasu export`` puts in an export: the torch-free install
    has no silero-vad, whose package depends on torch).

    Found without importing the package: its import sets torch's global thread
    count to 1, which would slow the device model down.
    """
    spec = importlib.util.find_spec("silero_vad")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / SILERO_FILE
        if not path.is_file():
            raise ImportError(f"silero-vad is installed but {path} is missing")
        return path
    if fallback is not None:
        if not Path(fallback).is_file():
            raise ImportError(f"the silero VAD model {fallback} is missing")
        return Path(fallback)
    raise ImportError(
        "the silero VAD needs its model: the silero-vad package (pip install 'pasu[full]'), or an export "
        "(pasu export) that carries it (--runtime onnx --model EXPORT_DIR); or use --vad webrtc"
    )


@lru_cache(maxsize=4)
def _silero_session(path: Path):
    """One ONNX Runtime session per model file and process, shared (``run`` is thread-safe;
    the recurrent state and the context travel in and out of each call).

    ONNX Runtime rather than the package's TorchScript model: on one thread it is
    ~0.3 ms a frame, while torch's intra-op pool, sized for the device model,
    made a 32 ms frame cost tens of ms on a busy 2-core machine.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the silero VAD needs onnxruntime: pip install onnxruntime (or use --vad webrtc)") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    log.debug("silero VAD: %s", path)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class SileroFrames:
    """Silero VAD's speech probability per 32 ms frame, thresholded; keeps its own state."""

    def __init__(self, options: VadOptions) -> None:
        self._session = _silero_session(silero_model_path(options.silero_model))
        self._threshold = options.speech_threshold
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, SILERO_CONTEXT), np.float32)
        self._rate = np.array(options.sample_rate, dtype=np.int64)
        self.last_probability = 0.0

    def is_speech(self, frame: np.ndarray) -> bool:
        x = (frame.astype(np.float32) / 32768.0).reshape(1, -1)
        out, self._state = self._session.run(
            None, {"input": np.concatenate([self._context, x], axis=1), "state": self._state, "sr": self._rate}
        )
        self._context = x[:, -SILERO_CONTEXT:]
        self.last_probability = float(np.asarray(out).reshape(-1)[0])
        return self.last_probability >= self._threshold


def frame_classifier(options: VadOptions) -> FrameClassifier:
    return SileroFrames(options) if options.backend == "silero" else WebrtcFrames(options)


class VadSegmenter:
    """Incremental segmentation: ``push(chunk) -> events``, ``flush() -> events`` at end of stream."""

    def __init__(self, options: VadOptions = VadOptions()) -> None:
        self.o = options
        self._vad = frame_classifier(options)
        self._n = options.frame_samples
        self._pad = options.frames(options.padding_ms) if options.padding_ms else 0
        self._window = options.frames(options.start_window_ms)
        self._start = options.frames(options.start_ms)
        self._silence = options.frames(options.min_silence_ms)
        self._max = max(1, int(options.max_segment_s * 1000 / options.frame_length_ms))
        self._rest = np.zeros(0, dtype=np.int16)
        self.pos = 0  # samples classified so far
        self._pre: deque[tuple[np.ndarray, bool]] = deque(maxlen=self._pad + self._window)
        self._open = False
        self._segment = -1
        self._emitted = 0  # frames of the open segment emitted
        self._tail: list[np.ndarray] = []  # unvoiced frames past the padding, held back
        self._silence_run = 0
        self._voiced = 0  # voiced frames of the open segment
        self._end = 0  # sample index just after the last emitted frame

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def segments(self) -> int:
        """Segments started so far."""
        return self._segment + 1

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        a = to_int16(samples)
        if self._rest.size:
            a = np.concatenate([self._rest, a])
        events: list[VadEvent] = []
        n_frames = a.size // self._n
        for i in range(n_frames):
            frame = a[i * self._n : (i + 1) * self._n]
            voiced = self._vad.is_speech(frame) and self._loud(frame)
            self._frame(frame, voiced, events)
            self.pos += self._n
        self._rest = a[n_frames * self._n :].copy()
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: close the open segment (the partial last frame counts as audio)."""
        events: list[VadEvent] = []
        if self._open:
            if self._rest.size and not self._tail and self._silence_run <= self._pad:
                events.append(VadEvent("audio", self._segment, self._end, self._rest))
                self._end += self._rest.size
            self._close(events)
        self.pos += self._rest.size
        self._rest = np.zeros(0, dtype=np.int16)
        return events

    # -- per frame ---------------------------------------------------------
    def _loud(self, frame: np.ndarray) -> bool:
        if self.o.energy_floor_dbfs is None:
            return True
        power = float(np.mean(np.square(frame.astype(np.float64)))) / 32768.0**2
        return 10.0 * np.log10(power + 1e-12) >= self.o.energy_floor_dbfs

    def _frame(self, frame: np.ndarray, voiced: bool, events: list[VadEvent]) -> None:
        if not self._open:
            self._pre.append((frame, voiced))
            recent = list(self._pre)[-self._window :]
            if sum(v for _, v in recent) >= self._start:
                self._begin(events)
            return
        if voiced:
            self._silence_run = 0
            self._voiced += 1
            if self._tail:
                self._emit(np.concatenate(self._tail), len(self._tail), events)
                self._tail = []
            self._emit(frame, 1, events)
        else:
            self._silence_run += 1
            if self._silence_run <= self._pad:
                self._emit(frame, 1, events)
            else:
                self._tail.append(frame)
            if self._silence_run >= self._silence:
                self._close(events)
                return
        if self._emitted >= self._max:
            self._close(events, cut=True)

    def _begin(self, events: list[VadEvent]) -> None:
        frames = list(self._pre)
        recent_start = len(frames) - min(self._window, len(frames))
        first_voiced = next(i for i in range(recent_start, len(frames)) if frames[i][1])
        keep = frames[max(0, first_voiced - self._pad) :]
        self._pre.clear()
        self._open = True
        self._segment += 1
        self._emitted = 0
        self._tail = []
        self._silence_run = 0
        self._voiced = sum(v for _, v in keep)
        for _, v in reversed(keep):  # trailing unvoiced frames of the pre-roll count as silence
            if v:
                break
            self._silence_run += 1
        start = self.pos + self._n - len(keep) * self._n
        self._end = start
        events.append(VadEvent("start", self._segment, start))
        self._emit(np.concatenate([f for f, _ in keep]), len(keep), events)

    def _emit(self, audio: np.ndarray, frames: int, events: list[VadEvent]) -> None:
        events.append(VadEvent("audio", self._segment, self._end, audio))
        self._end += audio.size
        self._emitted += frames

    def _close(self, events: list[VadEvent], cut: bool = False) -> None:
        speech_s = self._voiced * self._n / self.o.sample_rate
        events.append(VadEvent("end", self._segment, self._end, cut=cut, speech_s=speech_s))
        # Held-back silence is not part of this segment but may pre-roll the next.
        for f in self._tail[-self._pre.maxlen :] if self._pre.maxlen else []:
            self._pre.append((f, False))
        self._tail = []
        self._open = False
        self._silence_run = 0


@dataclass(frozen=True)
class Segment:
    """A whole segment (offline use and tests)."""

    index: int
    start: int
    end: int
    audio: np.ndarray  # int16
    cut: bool
    speech_s: float = 0.0  # of it, what the frames called speech (seconds)


def segment_audio(samples: np.ndarray, options: VadOptions = VadOptions(), chunk: int = 1600) -> list[Segment]:
    """Segment a whole recording (chunked through the streaming segmenter, so both agree)."""
    seg = VadSegmenter(options)
    parts: dict[int, list[np.ndarray]] = {}
    starts: dict[int, int] = {}
    out: list[Segment] = []
    a = to_int16(samples)
    events = [e for i in range(0, a.size, chunk) for e in seg.push(a[i : i + chunk])] + seg.flush()
    for e in events:
        if e.kind == "start":
            starts[e.segment], parts[e.segment] = e.at, []
        elif e.kind == "audio" and e.audio is not None:
            parts[e.segment].append(e.audio)
        else:
            audio = np.concatenate(parts.pop(e.segment)) if parts.get(e.segment) else np.zeros(0, np.int16)
            out.append(Segment(e.segment, starts.pop(e.segment), e.at, audio, e.cut, e.speech_s))
    return out
