"""`wavegen <command>`: a thin argparse front over the library.

User errors (bad files, wrong conventions, missing checkpoints) print one line and exit 1;
they never print a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from wavegen.audio import AudioError, MelError, atomic_write, load_audio, log_mel
from wavegen.checkpoint import CheckpointError
from wavegen.config import ConfigError, load_preset, preset_names
from wavegen.corpus import RecipeError
from wavegen.data import CorpusError

USER_ERRORS = (AudioError, MelError, CorpusError, CheckpointError, ConfigError, RecipeError, FileExistsError)


def cmd_mel(args: argparse.Namespace) -> int:
    audio = load_preset(args.preset).audio
    out = Path(args.output)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite")
    mel = log_mel(load_audio(args.input, audio.sample_rate), audio).numpy().astype(np.float32)
    atomic_write(out, lambda tmp: np.save(open(tmp, "wb"), mel))
    print(f"{out}: mel {mel.shape[0]} x {mel.shape[1]} frames")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from wavegen.data import preprocess

    manifest = preprocess(args.corpus, args.output, load_preset(args.preset).audio, workers=args.workers)
    utterances = manifest["utterances"]
    for split in ("train", "valid"):
        chosen = [u for u in utterances if u["split"] == split]
        print(f"{split}: {len(chosen)} files, {sum(u['seconds'] for u in chosen) / 60:.1f} min")
    if manifest["failed"]:
        print(f"skipped {len(manifest['failed'])} unreadable file(s); see {args.output}/manifest.json")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from wavegen.corpus import build_asterisk

    stats = build_asterisk(args.output)
    print(json.dumps(stats, indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wavegen.stages import teacher_stage
    from wavegen.train import fit

    preset = _with_overrides(load_preset(args.preset), "train", args)
    torch.manual_seed(preset.train.seed)  # the initial weights too are a function of the seed
    path = fit(teacher_stage(preset), preset, preset.train, args.data, args.out, resume=args.resume,
               device=args.device)
    print(f"teacher: {path}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from wavegen.checkpoint import import_model
    from wavegen.stages import distill_stage
    from wavegen.train import fit

    preset = _with_overrides(load_preset(args.preset), "distill_train", args)
    source = Path(args.teacher)
    teacher, teacher_preset = import_model(source / "teacher.safetensors" if source.is_dir() else source, "teacher")
    if teacher_preset.audio != preset.audio:
        raise ConfigError(f"the teacher's mel convention {teacher_preset.audio} differs from the preset's")
    torch.manual_seed(preset.distill_train.seed)
    path = fit(distill_stage(preset, teacher), preset, preset.distill_train, args.data, args.out,
               resume=args.resume, device=args.device)
    print(f"student: {path}")
    return 0


def _with_overrides(preset, section: str, args: argparse.Namespace):
    """Apply --max-steps / --batch-size to one training section of the preset."""
    import dataclasses

    changes = {k: v for k, v in (("max_steps", args.max_steps), ("batch_size", args.batch_size)) if v is not None}
    if not changes:
        return preset
    return dataclasses.replace(preset, **{section: dataclasses.replace(getattr(preset, section), **changes)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavegen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    presets = f"a shipped preset ({', '.join(preset_names())}) or a YAML file"

    p = sub.add_parser("mel", help="compute the log-mel of one audio file as float32 (n_mels, frames) .npy")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--preset", default="speech16k", help=presets)
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=cmd_mel)

    p = sub.add_parser("preprocess", help="resample, trim, normalise and cache a corpus as arrays")
    p.add_argument("corpus", help="a folder of audio, an LJSpeech folder or a text file of paths")
    p.add_argument("output")
    p.add_argument("--preset", default="speech16k", help=presets)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("corpus", help="build a training corpus from material on this machine")
    p.add_argument("recipe", choices=["asterisk"])
    p.add_argument("output")
    p.set_defaults(func=cmd_corpus)

    for name, func, helptext in (("train", cmd_train, "train the WaveNet teacher by maximum likelihood"),
                                 ("distill", cmd_distill, "distil the IAF student from a trained teacher")):
        p = sub.add_parser(name, help=helptext)
        if name == "distill":
            p.add_argument("--teacher", required=True, help="a teacher run folder or .safetensors file")
        p.add_argument("--preset", default="speech16k", help=presets)
        p.add_argument("--data", required=True, help="a folder written by `wavegen preprocess`")
        p.add_argument("--out", required=True, help="the run folder (checkpoints, logs, TensorBoard)")
        p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
        p.add_argument("--max-steps", type=int, default=None)
        p.add_argument("--batch-size", type=int, default=None, help="per process")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            return args.func(args)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
