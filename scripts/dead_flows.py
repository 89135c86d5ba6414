"""A student export whose dead WaveNet flows are restarted (--init of a distillation that can train them) or
dropped (folded into flow 0's output gain: the same sound without their arithmetic).

    python scripts/dead_flows.py checkpoints/default runs/alive/init.safetensors \\
        corpora/asterisk/heldout_every3.txt --files 8 [--drop]

A flow is dead where no unit of its head's last hidden layer is ever positive (`CausalWaveNet.activity`): it
then outputs a constant shift and log-scale and no gradient reaches its weights. Measured on the student's own
samples of the listed files:

* restart (default): each dead flow gets fresh weights with that constant as its output bias
  (`Student.restart_flow`), so the new file synthesises exactly what the old one did (checked here);
* `--drop`: every WaveNet flow must be dead. The student becomes flow 0 alone (`layers: []`, `hn_gain`), its
  output log-gain the flows' summed log-scales; their composite constant shift (a DC offset the mel does not
  hold) is left out. The change of a sample is printed with and without that offset.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch

from wavegen.audio import load_audio
from wavegen.checkpoint import export_model, import_model
from wavegen.config import BodyShape, FlowConfig
from wavegen.files import discover
from wavegen.models import Student
from wavegen.vocoder import Vocoder


def dropped(student: Student, outputs: list[torch.Tensor]) -> tuple[Student, float]:
    """`student` (with a harmonic flow 0) without its WaveNet flows, whose constant outputs (shift, log-scale)
    `outputs` fold into flow 0's log-gain; and the composite shift left out."""
    shift, log_gain = 0.0, 0.0
    for output in outputs:
        mu, log_sigma = output[0].item(), max(output[1].item(), student.cfg.log_scale_min)
        shift, log_gain = shift * math.exp(log_sigma) + mu, log_gain + log_sigma
    unused = {f.name for f in dataclasses.fields(BodyShape)} - {"n_mels", "upsample_scales"}  # the flows' shape
    cfg = dataclasses.replace(student.cfg, layers=(), flow_source=0, hn_gain=True,
                              **{name: getattr(FlowConfig(), name) for name in unused})
    lone = Student(cfg, student.source.audio)
    weights = {k: v for k, v in student.state_dict().items() if k.startswith("source.")}
    missing, unexpected = lone.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"source.log_gain"}:
        raise ValueError(f"flow 0 does not carry over: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        lone.source.log_gain.add_(log_gain)
    return lone.eval(), shift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint folder (student, pitch predictor)")
    parser.add_argument("output", help="the .safetensors to write")
    parser.add_argument("audio", help="wav files, a folder or a list, to measure the flows' activity on")
    parser.add_argument("--files", type=int, default=8, help="how many of them")
    parser.add_argument("--seed", type=int, default=0, help="for the fresh weights")
    parser.add_argument("--drop", action="store_true", help="drop the (all dead) flows instead of restarting them")
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
    dead = [k for k, a in enumerate(activity) if a == 0.0]
    for k in dead:
        spread = (outputs[k].max(0).values - outputs[k].min(0).values).max().item()
        print(f"flow {k} outputs (shift, log-scale) {outputs[k][0].tolist()}, spread over the files {spread:.1e}")
    preset = import_model(Path(args.checkpoint) / "student.safetensors", "student")[1]
    if args.drop:
        if len(dead) != len(student.flows) or student.source is None:
            raise SystemExit(f"error: --drop needs a harmonic flow 0 and every WaveNet flow dead (dead: {dead})")
        lone, shift = dropped(student, [each[0] for each in outputs])
        after = Vocoder(vocoder.audio, student=lone, pitch=vocoder.pitch_model, device="cpu",
                        precision="fp32").synthesize(mels[0], "student", z=z, refine_steps=0)
        print(f"dropped flows {dead}: log-gain {lone.source.log_gain.item():+.4f}, shift left out {shift:+.2e}; "
              f"largest change of a sample {(after - before).abs().max().item():.2e}, "
              f"{(after + shift - before).abs().max().item():.2e} with the shift")
        preset = dataclasses.replace(preset, student=lone.cfg)
        print(export_model(args.output, lone, "student", preset, init=f"{args.checkpoint}, dead flows {dead} dropped"))
        return
    torch.manual_seed(args.seed)
    for k in dead:
        student.restart_flow(k, outputs[k][0])
    vocoder._student_path = None  # rebuild the packed copies from the new weights
    after = vocoder.synthesize(mels[0], "student", z=z, refine_steps=0)
    print(f"restarted flows {dead}; largest change of a sample: {(after - before).abs().max().item():.2e}")
    print(export_model(args.output, student, "student", preset, init=f"{args.checkpoint}, dead flows {dead} restarted"))


if __name__ == "__main__":
    main()
