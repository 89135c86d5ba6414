"""Mel consistency: bring a synthesised waveform's band levels to the mel it was made from.

The student's output has the speaker's harmonics and a natural phase, but its level in a mel band and
frame can be off by a fraction of a nat, and that error is specific to the band, the frame and the
utterance (checkpoints/default/README.md: smoothed across even one or two bands, a correction is worth
little). The conditioning mel says what each level should be. One refinement step takes the waveform's
STFT (the mel's own analysis: window, hop, centring), measures its log-mel, and multiplies each STFT bin by
exp of the log-level error of the bands it lies in (W-weighted, as the mel filterbank weights it), keeping
the phase and the fine structure within each band; the inverse STFT gives the next waveform. Steps repeat
this; the distance to the mel shrinks with each.

By default the levels are compared after smoothing both sides across bands by a Gaussian of one band
(`REFINE_SMOOTHING`): matching single bands gains a little more on mels of real recordings, but where a mel's
low bands have lost the speaker's harmonic ripple (a TTS model's smoothed mel: measured with mels blurred across
0.7 bands) it fills the valleys between the harmonics and sounds worse than no refinement; at one band it helped
on every kind of mel measured (checkpoints/default/README.md).

This is a post-process outside the flow: `Student.sample`'s density is that of the raw sample, and
`Vocoder.synthesize(..., refine_steps=0)` returns it. Where the F0 is not the mel's own (a pitch shift, a
caller's contour), the mel's low bands ripple at the old harmonics, so the vocoder smooths wider
(`RETUNED_SMOOTHING`, 4 bands) and only the envelope is matched: the new harmonics stay where the flow put them.

Long inputs run in chunks of frames with enough context on either side that every chunk's interior equals
the whole pass (each step reads and writes a window of n_fft samples around each frame).
"""

from __future__ import annotations

import torch
from torch import Tensor

from wavegen.audio import bin_band_weights, mel_filterbank
from wavegen.config import AudioConfig
from wavegen.nn.envelope import smooth_bands

REFINE_STEPS = 8  # the vocoder's default for neural models (the model card's table: PESQ-wb and cost per step)
REFINE_SMOOTHING = 1.0  # mel bands (Gaussian width) over which levels are compared; 0: single bands
GAIN_LIMIT = 4.0  # nats per step: a guard against a band the waveform leaves empty, not a tuned value
CHUNK_FRAMES = 1024  # frames refined at once (plus context): bounds memory on long inputs


def match_mel(wav: Tensor, mel: Tensor, audio: AudioConfig, steps: int = REFINE_STEPS,
              smoothing: float = REFINE_SMOOTHING, chunk_frames: int = CHUNK_FRAMES) -> Tensor:
    """wav (B, F * hop) and its target log-mel (B, n_mels, F) -> the refined waveform (B, F * hop).

    `steps` refinement steps (0: wav unchanged); `smoothing` (mel bands, Gaussian width; 0: none): match the
    band-smoothed levels. Chunked over frames, equal to one pass.
    """
    frames, hop = mel.shape[-1], audio.hop_length
    if wav.shape[-1] != frames * hop:
        raise ValueError(f"a waveform of {wav.shape[-1]} samples for a mel of {frames} frames: expected {frames * hop}")
    if steps < 0 or smoothing < 0:
        raise ValueError(f"refinement steps and smoothing must be 0 or more, got {steps} and {smoothing}")
    if steps == 0:
        return wav
    context = steps * -(-audio.n_fft // hop)  # frames a step's result depends on, on either side, times steps
    out = torch.empty_like(wav)
    for start in range(0, frames, chunk_frames):
        end = min(frames, start + chunk_frames)
        lo, hi = max(0, start - context), min(frames, end + context)
        # the STFT of samples [lo, hi) has hi - lo + 1 frames; the one at hi is mel frame hi if there is one
        target = mel[..., lo:min(frames, hi + 1)]
        if target.shape[-1] == hi - lo:  # the input's end: the last STFT frame takes the last mel frame's level
            target = torch.cat([target, target[..., -1:]], dim=-1)
        piece = _refine(wav[:, lo * hop:hi * hop], target, audio, steps, smoothing)
        out[:, start * hop:end * hop] = piece[:, (start - lo) * hop:(end - lo) * hop]
    return out


def _refine(wav: Tensor, target: Tensor, audio: AudioConfig, steps: int, smoothing: float) -> Tensor:
    """wav (B, T) with T = F * hop, target log-mel (B, n_mels, F + 1) for its F + 1 centred STFT frames ->
    the waveform after `steps` steps (B, T)."""
    fbank = mel_filterbank(audio).to(wav.device)  # (n_freqs, n_mels)
    spread = bin_band_weights(audio).to(wav.device)  # (n_freqs, n_mels): a bin's gain from its bands'
    window = torch.hann_window(audio.win_length, device=wav.device)
    if smoothing > 0:
        target = smooth_bands(target, smoothing)
    length, pad = wav.shape[-1], audio.n_fft // 2
    if length <= pad:  # reflect padding needs more than half a window: pad with silence, cut back below
        wav = torch.nn.functional.pad(wav, (0, pad + 1 - length))
        target = torch.nn.functional.pad(target, (0, wav.shape[-1] // audio.hop_length + 1 - target.shape[-1]),
                                         mode="replicate")
    for _ in range(steps):
        spec = torch.stft(wav, audio.n_fft, audio.hop_length, audio.win_length, window, center=True,
                          pad_mode="reflect", return_complex=True)  # (B, n_freqs, F + 1)
        level = torch.log(torch.clamp(torch.einsum("fm,bft->bmt", fbank, spec.abs()), min=audio.log_floor))
        if smoothing > 0:
            level = smooth_bands(level, smoothing)
        gain = (target[..., :level.shape[-1]] - level).clamp(-GAIN_LIMIT, GAIN_LIMIT)  # (B, n_mels, F + 1)
        spec = spec * torch.exp(torch.einsum("fm,bmt->bft", spread, gain))
        wav = torch.istft(spec, audio.n_fft, audio.hop_length, audio.win_length, window, center=True,
                          length=wav.shape[-1])
    return wav[..., :length]
