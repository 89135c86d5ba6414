"""The labellers and the pitch predictor on speech whose F0 is known: each held-out recording is analysed by WORLD
(CheapTrick envelope, D4C aperiodicity) on a tracker's contour, smoothed (log-F0 median over 5 frames within each
voiced run, so no one-frame glitch becomes the truth), and resynthesised on that contour times a factor (0.7 and
1.4: the same speaker's envelope at a lower and a higher pitch). The contour it was built on is then the truth:
voicing error, median |error| in cents and gross errors (> 50 cents) on frames voiced in both, for each labeller
(DIO, Harvest, their majority with pYIN) and the predictor (voiced above VOICED_THRESHOLD), as `pitch_agreement`
scores them. "Home" is the tracker whose voicing and F0 the truth copies (that tracker has a home advantage).

    python scripts/pitch_truth.py corpora/asterisk/heldout.txt --every 3 --homes dio harvest --factors 1 0.7 1.4
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import scipy.signal
import torch

from wavegen.audio import load_audio, log_mel, pitch_labels, pyin_opinion, vote_labels
from wavegen.checkpoint import import_model
from wavegen.config import AudioConfig
from wavegen.evaluate import reference_files
from wavegen.models.pitch import VOICED_THRESHOLD, pitch_agreement

SMOOTH_FRAMES = 5


def smooth_contour(f0: np.ndarray, frames: int = SMOOTH_FRAMES) -> np.ndarray:
    """(F,) Hz, 0 unvoiced -> the same voicing, log-F0 median-filtered within each voiced run (edges repeated)."""
    out = f0.copy()
    edges = np.flatnonzero(np.diff(np.r_[0, (f0 > 0).astype(int), 0]))
    half = frames // 2
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        log = np.pad(np.log(f0[start:stop]), half, mode="edge")
        out[start:stop] = np.exp(scipy.signal.medfilt(log, frames)[half:-half])
    return out


def warp_frequency(spectra: np.ndarray, factor: float) -> np.ndarray:
    """(frames, bins) over 0..Nyquist -> the same stretched along frequency by `factor`: out[:, b] is spectra
    at frequency b / factor (linear interpolation between bins, the last bin's value beyond it), so what sat at
    f Hz now sits at f * factor Hz."""
    position = np.arange(spectra.shape[1]) / factor
    low = np.minimum(np.floor(position).astype(int), spectra.shape[1] - 1)
    high = np.minimum(low + 1, spectra.shape[1] - 1)
    weight = np.minimum(position - low, 1.0)
    return np.ascontiguousarray(spectra[:, low] * (1.0 - weight) + spectra[:, high] * weight)  # as pyworld needs


def resynthesise(wav: np.ndarray, f0: np.ndarray, factor: float, audio: AudioConfig, tract: bool = False
                 ) -> np.ndarray:
    """WORLD analysis of wav (F * hop,) on the contour f0 (F,), resynthesis on f0 * factor -> (F * hop,).

    `tract`: also warp the envelope and aperiodicity along frequency by `factor` (`warp_frequency`): formants
    move with the pitch, as from a vocal tract 1 / factor as long (a smaller speaker above 1, a larger below);
    otherwise the same envelope at another pitch."""
    import pyworld

    x = wav.astype(np.float64)
    frames = f0.size
    period = 1000.0 * audio.hop_length / audio.sample_rate
    contour = np.zeros(frames + 1)
    contour[:frames] = f0
    times = np.arange(frames + 1) * period / 1000.0
    envelope = pyworld.cheaptrick(x, contour, times, audio.sample_rate)
    aperiodicity = pyworld.d4c(x, contour, times, audio.sample_rate)
    if tract:
        envelope, aperiodicity = warp_frequency(envelope, factor), warp_frequency(aperiodicity, factor)
    y = pyworld.synthesize(contour * factor, envelope, aperiodicity, audio.sample_rate, period)
    y = y[: frames * audio.hop_length]
    return np.pad(y, (0, frames * audio.hop_length - y.size)).astype(np.float32)


def one_file(job: tuple) -> dict:
    """-> {home: {factor: {"truth": (F,), labeller or predictor name: (F,) Hz, 0 unvoiced}}} for one file."""
    path, checkpoints, homes, factors = job
    torch.set_num_threads(1)
    models = {name: import_model(checkpoint, "pitch") for name, checkpoint in checkpoints.items()}
    audio = next(iter(models.values()))[1].audio
    wav = load_audio(path, audio.sample_rate)
    wav = wav[: wav.size // audio.hop_length * audio.hop_length]
    out: dict = {}
    for home in homes:
        truth = smooth_contour(pitch_labels(wav, audio, home))
        for factor in factors:
            y = resynthesise(wav, truth, factor, audio)
            read = {tracker: pitch_labels(y, audio, tracker) for tracker in ("dio", "harvest")}
            read["vote"] = vote_labels(read["dio"], read["harvest"], *pyin_opinion(y, audio))
            mel = log_mel(y, audio)[None]
            for name, (model, _) in models.items():
                hz, probability = model.predict(mel)
                read[name] = torch.where(probability[0, : truth.size] > VOICED_THRESHOLD, hz[0, : truth.size],
                                         0.0).numpy()
            out.setdefault(home, {})[factor] = {"truth": truth * factor, **read}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="audio files: a folder or a list such as a corpus's heldout.txt")
    parser.add_argument("--checkpoint", nargs="+", default=["checkpoints/default/pitch.safetensors"],
                        help="pitch predictors (pitch.safetensors), each scored (named by its path if several)")
    parser.add_argument("--every", type=int, default=1, help="take every n-th file")
    parser.add_argument("--homes", nargs="+", default=["dio", "harvest"], choices=["dio", "harvest"])
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.7, 1.4])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    files = reference_files(args.reference)[:: args.every]
    checkpoints = ({"predictor": args.checkpoint[0]} if len(args.checkpoint) == 1 else
                   {path: path for path in args.checkpoint})
    jobs = [(path, checkpoints, args.homes, args.factors) for path in files]
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        results = list(pool.map(one_file, jobs))
    report: dict = {"files": len(files)}
    for home in args.homes:
        for factor in args.factors:
            parts = [r[home][factor] for r in results]
            truth = torch.from_numpy(np.concatenate([p["truth"] for p in parts])).float()
            row = {}
            for name in sorted(parts[0].keys() - {"truth"}):  # every labeller and predictor one_file read
                read = torch.from_numpy(np.concatenate([p[name] for p in parts])).float()
                row[name] = {k: round(v, 4) for k, v in pitch_agreement(read, read > 0, truth).items()}
            report[f"home {home}, x{factor}"] = {"voiced": round(float((truth > 0).float().mean()), 3), **row}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
