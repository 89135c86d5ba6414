"""Student synthesis speed of several checkpoints in one run, on the same mel, interleaved (so that a noisy
machine slows them alike): samples/s and real-time factor, medians of --repeats.

    python scripts/bench_compare.py OLD_FOLDER NEW_FOLDER --seconds 5
    python scripts/bench_compare.py default:0 default:8     # FOLDER:N runs N mel-consistency steps (default: the
                                                            # vocoder's), e.g. a default without and with them
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from wavegen.evaluate import speech_like
from wavegen.vocoder import Vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    vocoders = {c: Vocoder.load(c.rsplit(":", 1)[0] if ":" in c else c, device="cpu", precision=args.precision)
                for c in args.checkpoints}
    steps = {c: {"refine_steps": int(c.rsplit(":", 1)[1])} if ":" in c else {} for c in args.checkpoints}
    first = next(iter(vocoders.values()))
    _, mel = speech_like(first, args.seconds)
    samples = mel.shape[-1] * first.audio.hop_length
    times: dict[str, list[float]] = {c: [] for c in vocoders}
    for vocoder in vocoders.values():
        vocoder.synthesize(mel[..., :8], "student", seed=0)  # warm-up
    for _ in range(args.repeats):
        for name, vocoder in vocoders.items():
            start = time.perf_counter()
            vocoder.synthesize(mel, "student", seed=0, **steps[name])
            times[name].append(time.perf_counter() - start)
    report = {"threads": torch.get_num_threads(), "audio_seconds": samples / first.audio.sample_rate,
              "precision": {c: v.precision for c, v in vocoders.items()}}
    for name, values in times.items():
        median = statistics.median(values)
        seconds = samples / first.audio.sample_rate
        report[name] = {"samples_per_s": samples / median, "rtf": median / seconds}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
