"""Each speed lever of the default student and teacher measured in one run (issue 9's report).

    python scripts/levers.py [--checkpoint default] [--seconds 5]

Student: real-time factor on the same mel and noise for the float32 reference (conv1d) and the packed
GEMM pass in float32 and bfloat16 at several chunk lengths, at 1 and 2 threads. Teacher: samples/s of
the PyTorch step and of the compiled loop. Student log-prob: the compiled loop as one stage (one core) and
pipelined over the cores. Medians of 3 runs (the sequential paths: one run each).
"""

from __future__ import annotations

import argparse
import json

import torch

from wavegen.evaluate import speech_like, timed
from wavegen.nn import compiled
from wavegen.nn.packed import pack
from wavegen.vocoder import StudentPath, Vocoder


def median_seconds(run, repeats: int = 3) -> float:
    run()  # warm-up
    return timed(run, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--teacher-seconds", type=float, default=1.0)
    args = parser.parse_args()
    vocoder = Vocoder.load(args.checkpoint, device="cpu", precision="fp32")
    _, mel = speech_like(vocoder, args.seconds)
    z = torch.randn(1, mel.shape[-1] * vocoder.audio.hop_length, generator=torch.Generator().manual_seed(0))
    rows = {}
    upsampler = vocoder.student.upsampler
    def packed(dtype: torch.dtype, per_frame: bool) -> StudentPath:
        """Packed GEMM copies, conditioning projected per sample or (interpolating upsampler) per frame."""
        return StudentPath(pack(vocoder.student.flows, dtype, upsampler.projection()),
                           upsampler.knots if per_frame else upsampler.features)

    variants = [("fp32 conv1d (reference)", StudentPath(list(vocoder.student.flows), upsampler), (48, 128))]
    for dtype, chunks in ((torch.float32, (48, 128)), (torch.bfloat16, (16, 32, 48, 64, 128))):
        for per_frame in (False, True) if upsampler.mode == "interpolate" else (False,):
            name = f"{'fp32' if dtype == torch.float32 else 'bf16'} packed GEMMs, conditioning per " + (
                "frame" if per_frame else "sample")
            variants.append((name, packed(dtype, per_frame), chunks))
    reference = None
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for name, path, chunks in variants:
            vocoder._student_path = path  # what the vocoder's streamed synthesis runs (measurement only)
            for chunk in chunks:
                vocoder.chunk_frames = chunk
                with torch.inference_mode():
                    seconds = median_seconds(lambda: vocoder.synthesize(mel, "student", z=z))
                    out = vocoder.synthesize(mel, "student", z=z)
                reference = out if reference is None else reference
                error = float((out - reference).norm() / reference.norm())
                rows[f"student {name}, chunk {chunk}, {threads} thread(s)"] = {
                    "rtf": seconds / args.seconds, "relative_error_vs_reference": error}
                print(f"{list(rows)[-1]}: RTF {seconds / args.seconds:.4f} (waveform error {error:.1e})", flush=True)
    torch.set_num_threads(2)
    frames = round(args.teacher_seconds * vocoder.audio.sample_rate / vocoder.audio.hop_length)
    for name, use_loop, length in (("PyTorch step", False, max(1, frames // 8)), ("compiled loop", True, frames)):
        seconds = median_seconds(lambda: vocoder.teacher.generate(mel[..., :length], compiled=use_loop), 1)
        rows[f"teacher {name}"] = {"samples_per_s": length * vocoder.audio.hop_length / seconds}
        print(f"teacher {name}: {rows[f'teacher {name}']['samples_per_s']:,.0f} samples/s", flush=True)
    student = vocoder.student
    with torch.no_grad():
        cond = student.upsampler(mel[..., :frames])
    x = vocoder.synthesize(mel[..., :frames], "student", seed=0)
    for name, threads in (("one stage", 1), ("pipelined", None)):
        loop = compiled.CompiledLoop(list(reversed(student.flows)), student.cfg.log_scale_min, threads=threads)
        seconds = median_seconds(lambda: loop.run_blocks(cond, x, compiled.INVERT), 1)
        rows[f"student log-prob, {name}"] = {"samples_per_s": x.shape[-1] / seconds,
                                             "stages": len(loop.stages(1)) - 1}
        print(f"student log-prob, {name}: {x.shape[-1] / seconds:,.0f} samples/s", flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
