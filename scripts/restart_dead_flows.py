"""A student export whose dead WaveNet flows are restarted, as the --init of a distillation that can train them.

    python scripts/restart_dead_flows.py checkpoints/default runs/alive/init.safetensors \\
        corpora/asterisk/heldout_every3.txt --files 8

A flow is dead where no unit of its head's last hidden layer is ever positive (`CausalWaveNet.activity`): it
then outputs a constant shift and log-scale and no gradient reaches its weights. Each flow whose activity on
the student's own samples of the listed files is 0 gets fresh weights with that constant as its output bias
(`Student.restart_flow`), so the new file synthesises exactly what the old one did (checked here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from wavegen.audio import load_audio
from wavegen.checkpoint import export_model, import_model
from wavegen.files import discover
from wavegen.vocoder import Vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint folder (student, pitch predictor)")
    parser.add_argument("output", help="the .safetensors to write")
    parser.add_argument("audio", help="wav files, a folder or a list, to measure the flows' activity on")
    parser.add_argument("--files", type=int, default=8, help="how many of them")
    parser.add_argument("--seed", type=int, default=0, help="for the fresh weights")
    args = parser.parse_args()
    vocoder = Vocoder.load(args.checkpoint, device="cpu", precision="fp32")
    student = vocoder.student
    mels = [vocoder.mel(load_audio(path, vocoder.audio.sample_rate)) for _, path in discover(args.audio)[:args.files]]
    found = []
    for mel in mels:
        contour = vocoder.source_contour(mel, None, 1.0)
        f0, voicing = (None, None) if contour is None else contour[:2]
        found.append(student.flow_activity(mel, f0, voicing, torch.Generator().manual_seed(0)))
    activity = [max(each[k][0] for each in found) for k in range(len(student.flows))]
    outputs = [torch.stack([each[k][1] for each in found]) for k in range(len(student.flows))]
    print("activity per WaveNet flow (largest over the files):", ", ".join(f"{a:.4f}" for a in activity))
    z = torch.randn(1, mels[0].shape[-1] * vocoder.audio.hop_length, generator=torch.Generator().manual_seed(1))
    before = vocoder.synthesize(mels[0], "student", z=z, refine_steps=0)
    torch.manual_seed(args.seed)
    dead = [k for k, a in enumerate(activity) if a == 0.0]
    for k in dead:
        spread = (outputs[k].max(0).values - outputs[k].min(0).values).max().item()
        print(f"flow {k} outputs (shift, log-scale) {outputs[k][0].tolist()}, spread over the files {spread:.1e}")
        student.restart_flow(k, outputs[k][0])
    vocoder._student_path = None  # rebuild the packed copies from the new weights
    after = vocoder.synthesize(mels[0], "student", z=z, refine_steps=0)
    print(f"restarted flows {dead}; largest change of a sample: {(after - before).abs().max().item():.2e}")
    preset = import_model(Path(args.checkpoint) / "student.safetensors", "student")[1]
    print(export_model(args.output, student, "student", preset, init=f"{args.checkpoint}, dead flows {dead} restarted"))


if __name__ == "__main__":
    main()
