"""Streaming stages: each turns its input, chunk by chunk, into final output frames.

Every stage has the same two operations:

* ``push(x)`` consumes new input, returns the output frames that are now
  *final* (all the right context they need has arrived) and keeps only the
  left context and pending frames it still needs.  Each output frame is
  computed by ``push`` exactly once.
* ``peek(x)`` returns the remaining, not-yet-final output frames as if the
  input ended after ``x`` (``x`` being the upstream stage's ``peek`` output),
  without changing the state.  Its cost is bounded by the stage's look-ahead.

Chaining ``push`` for all chunks, then ``peek`` once, yields exactly the
whole-utterance computation of the input so far.
"""

from __future__ import annotations

import torch
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.layers.abs_normalize import AbsNormalize

from pasu.encoders.local_block import LocalBlock


def _conv_out_length(length: int, convs: tuple[tuple[int, int], ...]) -> int:
    for kernel, stride in convs:
        length = (length - kernel) // stride + 1
    return max(length, 0)


class StftFeatureStage:
    """Waveform samples -> (normalized) log-mel frames, as ESPnet's DefaultFrontend.

    With ``center=True`` the STFT reflect-pads ``n_fft // 2`` samples at both
    ends.  The start padding is built once ``n_fft // 2 + 1`` samples have
    arrived; a frame whose window lies within start padding + received audio
    is final.  The frames that overlap the end padding are computed only by
    ``peek`` (i.e. at ``encode()`` time), reflecting the current last samples.
    """

    def __init__(self, frontend: DefaultFrontend, normalize: AbsNormalize | None = None) -> None:
        stft = frontend.stft
        if stft is None:
            raise ValueError("the frontend computes no STFT")
        self.logmel = frontend.logmel
        self.n_mels = frontend.output_size()
        self.normalize = normalize
        self.n_fft = stft.n_fft
        self.hop = stft.hop_length
        self.win_length = stft.win_length
        self.window_name = stft.window
        self.normalized = stft.normalized
        self.onesided = stft.onesided
        self.pad = stft.n_fft // 2 if stft.center else 0
        self._window: torch.Tensor | None = None  # built like Stft.forward
        self.frames_pushed = 0  # frames computed by push (each exactly once)
        self.frames_peeked = 0
        self.reset()

    def reset(self) -> None:
        self._head: list[torch.Tensor] = []  # real samples before start padding
        self._buf: torch.Tensor | None = None  # padded stream from _buf_start
        self._buf_start = 0  # padded-stream index of _buf[0]
        self._stream_len = 0  # start padding + received samples
        self._next = 0  # next frame index to finalize
        self.frames_pushed = 0
        self.frames_peeked = 0

    @property
    def started(self) -> bool:
        return self._buf is not None

    def _features(self, segment: torch.Tensor) -> torch.Tensor:
        """Frames of ``segment`` (padded-stream samples, 1-D) -> (1, T, n_mels)."""
        window = self._window
        if self.window_name is not None and (
            window is None or window.dtype != segment.dtype or window.device != segment.device
        ):
            window = getattr(torch, f"{self.window_name}_window")(
                self.win_length, dtype=segment.dtype, device=segment.device
            )
            self._window = window
        spec = torch.stft(
            segment[None].float(),
            n_fft=self.n_fft,
            hop_length=self.hop,
            win_length=self.win_length,
            window=window,
            center=False,
            normalized=self.normalized,
            onesided=self.onesided,
            return_complex=True,
        )
        spec = torch.view_as_real(spec).type(segment.dtype).transpose(1, 2)
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2
        feats, _ = self.logmel(power, None)
        if self.normalize is not None:
            feats, _ = self.normalize(feats, None)
        return feats

    def _empty(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(1, 0, self.n_mels)

    def _start(self, samples: torch.Tensor) -> torch.Tensor | None:
        """The padded stream once it can start (pad + 1 samples), else None."""
        self._head.append(samples)
        head = torch.cat(self._head)
        if head.numel() <= self.pad:  # reflect padding needs pad + 1 samples
            return None
        self._head = []
        start_pad = head[1 : self.pad + 1].flip(0)
        self._stream_len = start_pad.numel() + head.numel()
        return torch.cat([start_pad, head])

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        """Feed 1-D samples; return the newly final frames (1, n, n_mels)."""
        if self._buf is None:
            self._buf = self._start(samples)
            if self._buf is None:
                return self._empty(samples)
        else:
            self._buf = torch.cat([self._buf, samples])
            self._stream_len += samples.numel()
        n_final = max((self._stream_len - self.n_fft) // self.hop + 1, 0)
        if n_final <= self._next:
            return self._empty(samples)
        begin = self._next * self.hop - self._buf_start
        end = (n_final - 1) * self.hop + self.n_fft - self._buf_start
        feats = self._features(self._buf[begin:end])
        self.frames_pushed += feats.size(1)
        self._next = n_final
        # Keep the next frame's samples and the last pad + 1 samples (end padding).
        keep_from = min(self._next * self.hop, self._stream_len - self.pad - 1)
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return feats

    def peek(self, like: torch.Tensor) -> torch.Tensor:
        """Frames that overlap the end padding, as if input ended now."""
        buf = self._buf
        if buf is None:
            return self._empty(like)
        segment = buf[self._next * self.hop - self._buf_start :]
        if self.pad > 0:
            segment = torch.cat([segment, buf[-self.pad - 1 : -1].flip(0)])
        if segment.numel() < self.n_fft:
            return self._empty(like)
        feats = self._features(segment)
        self.frames_peeked += feats.size(1)
        return feats


class SubsamplingStage:
    """Conv2d subsampling: output t reads input frames [S t, S t + R).

    No padding on the time axis, so an output is final once its R inputs have
    arrived and ``peek`` only has to convolve the pending + tail frames.
    """

    def __init__(self, embed: torch.nn.Module, convs: tuple[tuple[int, int], ...]) -> None:
        if not isinstance(embed.out, torch.nn.Linear):
            raise TypeError(f"{type(embed).__name__} has no linear output layer")
        self.embed = embed
        self.out_features = embed.out.out_features
        self.convs = convs
        self.stride = 1
        self.receptive_field = 1
        for kernel, stride in convs:
            self.receptive_field += (kernel - 1) * self.stride
            self.stride *= stride
        self.frames_pushed = 0
        self.frames_peeked = 0
        self.reset()

    def reset(self) -> None:
        self._buf: torch.Tensor | None = None
        self.frames_pushed = 0
        self.frames_peeked = 0

    def _run(self, feats: torch.Tensor) -> tuple[torch.Tensor, int]:
        n = _conv_out_length(feats.size(1), self.convs)
        if n == 0:
            return feats.new_zeros(1, 0, self.out_features), 0
        out, _ = self.embed(feats, None)
        if isinstance(out, tuple):  # a positional encoding returning (x, pos)
            out = out[0]
        return out, n

    def push(self, feats: torch.Tensor) -> torch.Tensor:
        self._buf = feats if self._buf is None else torch.cat([self._buf, feats], 1)
        out, n = self._run(self._buf)
        self._buf = self._buf[:, n * self.stride :]
        self.frames_pushed += n
        return out

    def peek(self, feats: torch.Tensor) -> torch.Tensor:
        buf = feats if self._buf is None else torch.cat([self._buf, feats], 1)
        out, n = self._run(buf)
        self.frames_peeked += n
        return out


class LocalBlockStage:
    """One :class:`LocalBlock` run incrementally.

    State: the depthwise conv's input (GLU output) for the last
    ``left_context`` finalized frames plus all pending frames (initially
    ``left_context`` zeros — the conv's zero padding), and the pending frames'
    residual.  A frame is final once ``right_context`` later frames exist;
    ``peek`` finishes the pending ones with zero right padding (utterance end).
    """

    def __init__(self, block: LocalBlock) -> None:
        self.block = block
        self.left = block.left_context
        self.right = block.right_context
        self.frames_pushed = 0
        self.frames_peeked = 0
        self.reset()

    def reset(self) -> None:
        self._gates: torch.Tensor | None = None  # (1, left + pending, D)
        self._residual: torch.Tensor | None = None  # (1, pending, D)
        self.frames_pushed = 0
        self.frames_peeked = 0

    def _extended(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual, gates) held so far with ``x``'s appended; the state is not changed
        (zero-initialized on the first call)."""
        if self._gates is None or self._residual is None:
            self._gates = x.new_zeros(1, self.left, x.size(-1))
            self._residual = x.new_zeros(1, 0, x.size(-1))
        if x.size(1) == 0:
            return self._residual, self._gates
        r, g = self.block.pre(x)
        return torch.cat([self._residual, r], 1), torch.cat([self._gates, g], 1)

    def push(self, x: torch.Tensor) -> torch.Tensor:
        residual, gates = self._extended(x)
        n = residual.size(1) - self.right
        if n <= 0:
            self._residual, self._gates = residual, gates
            return x[:, :0]
        conv = self.block.conv_module.depthwise(gates)  # n frames (valid)
        out = self.block.post(residual[:, :n], conv)
        self._residual, self._gates = residual[:, n:], gates[:, n:]
        self.frames_pushed += n
        return out

    def peek(self, x: torch.Tensor) -> torch.Tensor:
        residual, gates = self._extended(x)
        if residual.size(1) == 0:
            return x[:, :0]
        gates = torch.nn.functional.pad(gates, (0, 0, 0, self.right))
        out = self.block.post(residual, self.block.conv_module.depthwise(gates))
        self.frames_peeked += out.size(1)
        return out
