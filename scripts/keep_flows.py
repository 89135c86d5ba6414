"""A student export cut to its first N flows, as the --init of a leaner student's distillation.

    python scripts/keep_flows.py checkpoints/default/student.safetensors runs/lean/init.safetensors \
        --preset speech16k

The preset's student must be the source's with fewer flows (same widths, upsampler and depth per kept flow).
Dropping the last flows leaves a valid IAF (the kept flows transform z as before); distillation then adapts it.
With `layers: []` beside a harmonic flow 0, only flow 0 is kept.
"""

from __future__ import annotations

import argparse
import dataclasses

from wavegen.checkpoint import export_model, import_model
from wavegen.config import ConfigError, load_preset
from wavegen.models import Student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a student .safetensors")
    parser.add_argument("output", help="the .safetensors to write")
    parser.add_argument("--preset", default="speech16k", help="the leaner student's preset (name or YAML)")
    args = parser.parse_args()
    preset = load_preset(args.preset)
    full, source = import_model(args.source, "student")
    kept = preset.student.n_flows
    if dataclasses.replace(source.student, layers=source.student.layers[:kept]) != preset.student:
        raise ConfigError(f"{args.preset}'s student is not {args.source}'s first {kept} flows: "
                          f"{preset.student} vs {source.student}")
    lean = Student(preset.student, preset.audio)
    wanted = lean.state_dict().keys()  # the kept flows (and the upsampler only if any WaveNet flow is kept)
    lean.load_state_dict({k: v for k, v in full.state_dict().items() if k in wanted}, strict=True)
    print(export_model(args.output, lean, "student", preset, init=f"first {kept} flows of {args.source}"))


if __name__ == "__main__":
    main()
