"""Voices the corpus lacks, as references for `wavegen eval`: held-out recordings WORLD-resynthesised.
Each recording is analysed (`pitch_truth.resynthesise`: CheapTrick envelope, D4C aperiodicity) on the
labeller's contour smoothed by `pitch_truth.smooth_contour`, and resynthesised at each factor two ways:
"pitch" (the contour times the factor on the same envelope) and "tract" (the envelope and aperiodicity also
stretched along frequency by the factor: formants move with the pitch, a smaller vocal tract above 1); plus
"world1.0" (factor 1: WORLD's own loss, the reference of the reference). Written to
OUT/<variant>/<the file's path in the corpus> (its first folder, the voice, kept for eval's per-voice
breakdown), 16-bit PCM at the preset's rate, with OUT/<variant>/list.txt listing the files relative to that
folder. A file is peak-normalised (to PEAK) only if it would clip; the printed summary counts those.

    python scripts/voice_variants.py corpora/asterisk/heldout_every3.txt --out runs/voices --workers 1
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pitch_truth import resynthesise, smooth_contour

from wavegen.audio import AudioError, load_audio, pitch_labels, save_audio
from wavegen.config import AudioConfig, load_preset
from wavegen.files import discover

PEAK = 0.99  # a resynthesis whose peak would exceed 1.0 is scaled to this


def variants(factors: list[float]) -> dict[str, tuple[float, bool]]:
    """{folder name: (factor, tract)}: "world1.0", then "pitch<f>" and "tract<f>" for each factor f."""
    out = {"world1.0": (1.0, False)}
    for kind, tract in (("pitch", False), ("tract", True)):
        out.update({f"{kind}{factor:g}": (factor, tract) for factor in factors})
    return out


def one_file(job: tuple[Path, str, Path, dict[str, tuple[float, bool]], AudioConfig, str]) -> dict[str, bool]:
    """Writes one recording's variants; -> {variant: whether it was peak-normalised}. Raises AudioError."""
    path, key, out, kinds, audio, home = job
    wav = load_audio(path, audio.sample_rate)
    wav = wav[: wav.size // audio.hop_length * audio.hop_length]
    truth = smooth_contour(pitch_labels(wav, audio, home))
    normalised = {}
    for name, (factor, tract) in kinds.items():
        y = resynthesise(wav, truth, factor, audio, tract=tract)
        peak = float(np.max(np.abs(y))) if y.size else 0.0
        normalised[name] = peak > 1.0
        save_audio(out / name / key, y * (PEAK / peak) if peak > 1.0 else y, audio.sample_rate)
    return normalised


def run(job: tuple) -> dict[str, bool] | str:
    """`one_file`, or the error's message for a file that cannot be read."""
    try:
        return one_file(job)
    except AudioError as exc:
        return str(exc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="audio files: a folder or a list such as a corpus's heldout.txt")
    parser.add_argument("--out", default="runs/voices", help="one folder per variant is written here")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.7, 1.4])
    parser.add_argument("--home", default="dio", choices=["dio", "harvest"], help="the contour's tracker")
    parser.add_argument("--preset", default="speech16k", help="its audio settings (rate, hop)")
    parser.add_argument("--every", type=int, default=1, help="take every n-th file")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    audio = load_preset(args.preset).audio
    kinds = variants(args.factors)
    files = discover(args.reference)[:: args.every]
    out = Path(args.out)
    jobs = [(path, key, out, kinds, audio, args.home) for key, path in files]
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        results = list(pool.map(run, jobs))
    written = [(key, r) for (key, _), r in zip(files, results, strict=True) if isinstance(r, dict)]
    for r in results:
        if isinstance(r, str):
            print(f"skipped: {r}", file=sys.stderr)
    summary: dict = {"files": len(written), "skipped": len(files) - len(written), "out": str(out)}
    for name, (factor, tract) in kinds.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "list.txt").write_text("".join(f"{key}\n" for key, _ in written))
        summary[name] = {"factor": factor, "tract": tract,
                         "peak_normalised": sum(r[name] for _, r in written)}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
