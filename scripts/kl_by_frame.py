"""Where the density-distillation KL pulls: the closed-form KL(q || p) per sample of the student's own sample,
by frame class (silent / unvoiced / voiced), split into its log-scale and mean parts.

    python scripts/kl_by_frame.py checkpoints/default corpora/asterisk/heldout_every3.txt --files 8

KL = log s_p - log s_q + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2 per sample; the "scale" part is the KL at
mu_q = mu_p, the "mean" part the rest. The teacher scores the student's sample on the student's F0 (what
distillation does), at each `--temperature` (s_p times T). A frame is silent where its log-mel mean lies more than
`--silence` nats below the file's loudest frame, voiced where the pitch predictor says so.
"""

from __future__ import annotations

import argparse
import math

import torch

from wavegen.audio import load_audio
from wavegen.distributions import gaussian_kl
from wavegen.files import discover
from wavegen.vocoder import Vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint folder with student, teacher and pitch predictor")
    parser.add_argument("audio", help="wav files, a folder or a list")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--silence", type=float, default=5.0)
    args = parser.parse_args()
    vocoder = Vocoder.load(args.checkpoint, device="cpu", precision="fp32")
    hop = vocoder.audio.hop_length
    classes = ("silent", "unvoiced", "voiced")
    sums: dict[tuple, float] = {}
    counts = dict.fromkeys(classes, 0)
    with torch.no_grad():
        for _, path in discover(args.audio)[:args.files]:
            mel = vocoder.mel(load_audio(path, vocoder.audio.sample_rate))
            contour = vocoder.source_contour(mel, None, 1.0)
            f0, voicing = contour.f0, contour.voicing
            x, mu_q, log_sigma_q = vocoder.student.sample(mel, generator=torch.Generator().manual_seed(0), f0=f0,
                                                          voicing=voicing)
            mu_p, log_sigma_p = vocoder.teacher.gaussian(vocoder.teacher.params(x, mel, f0=f0, voicing=voicing))
            loudness = mel.mean(dim=1)[0]  # (F,)
            label = torch.where(loudness < loudness.max() - args.silence, 0, torch.where(voicing[0] > 0.5, 2, 1))
            label = label.repeat_interleave(hop)[:x.shape[-1]]
            for k, name in enumerate(classes):
                chosen = label == k
                counts[name] += int(chosen.sum())
                q, lq = mu_q[0, chosen], log_sigma_q[0, chosen]
                for t in args.temperature:
                    p, lp = mu_p[0, chosen], log_sigma_p[0, chosen] + math.log(t)
                    kl = gaussian_kl(q, lq, p, lp)
                    scale = gaussian_kl(q, lq, q, lp)
                    for key, value in (("kl", kl), ("scale", scale), ("mean", kl - scale), ("dlog", lp - lq)):
                        sums[(name, t, key)] = sums.get((name, t, key), 0.0) + float(value.sum())
                sums[(name, "log_sigma_q")] = sums.get((name, "log_sigma_q"), 0.0) + float(lq.sum())
    total = sum(counts.values())
    print(f"{'frames':<9} {'share':>6} {'log s_q':>8} " + " ".join(
        f"{'T=' + str(t) + ' ' + k:>16}" for t in args.temperature for k in ("KL", "scale part", "mean part",
                                                                            "log s_p-log s_q")))
    for name in classes:
        n = max(counts[name], 1)
        print(f"{name:<9} {counts[name] / total:6.3f} {sums[(name, 'log_sigma_q')] / n:8.3f} " + " ".join(
            f"{sums[(name, t, k)] / n:16.3f}" for t in args.temperature for k in ("kl", "scale", "mean", "dlog")))


if __name__ == "__main__":
    main()
