"""`wavegen <command>`: a thin argparse front over the library (the commands themselves: `wavegen.commands`).

User errors (bad files, wrong conventions, missing checkpoints) print one line and exit 1;
they never print a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

from wavegen.audio import DEFAULT_LABELLER, PITCH_TRACKERS
from wavegen.commands import (USER_ERRORS, cmd_app, cmd_bench, cmd_corpus, cmd_distill, cmd_eval, cmd_export, cmd_mel,
                              cmd_pitch, cmd_preprocess, cmd_train, cmd_vocode)
from wavegen.config import preset_names
from wavegen.refine import REFINE_SMOOTHING, REFINE_STEPS
from wavegen.vocoder import PRECISIONS


def _count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 0")
    return int(text)


def _non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def _add_refine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine-steps", type=_count, default=REFINE_STEPS, metavar="N",
                   help="mel-consistency steps after the student or the teacher: their band levels brought to the "
                   "mel's (0: the model's own sample)")
    p.add_argument("--refine-smoothing", type=_non_negative, default=REFINE_SMOOTHING, metavar="BANDS",
                   help="compare levels smoothed across this many mel bands (0: single bands, a little better on "
                   "mels of recordings, worse on smoothed TTS mels)")


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="the student's arithmetic: bf16 GEMMs (auto on CPUs with native bf16) or the fp32 reference")


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
    p.add_argument("corpus", help="a folder of audio, an LJSpeech folder or a text file of paths "
                   "(with --labels-only: a preprocessed folder)")
    p.add_argument("output", nargs="?")
    p.add_argument("--preset", default="speech16k", help=presets)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--labels-only", action="store_true",
                   help="(re)write the F0 labels of a preprocessed folder (one made before they existed, or "
                   "to change the labeller)")
    p.add_argument("--labeller", choices=PITCH_TRACKERS, default=DEFAULT_LABELLER,
                   help="F0 labeller: WORLD's DIO, WORLD's Harvest, or those two and pYIN by majority "
                   f"(default {DEFAULT_LABELLER})")
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
            p.add_argument("--pitch", default=None, help="the pitch predictor (.safetensors) a student trained "
                           "on predicted F0 (distill.f0_source: predictor) uses; default: pitch.safetensors "
                           "beside the teacher")
        else:
            p.add_argument("--stage", default="teacher", choices=["teacher", "pitch"],
                           help="the WaveNet teacher (default) or the F0/voicing predictor")
        p.add_argument("--preset", default="speech16k", help=presets)
        p.add_argument("--data", required=True, help="a folder written by `wavegen preprocess`")
        p.add_argument("--out", required=True, help="the run folder (checkpoints, logs, TensorBoard)")
        p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
        p.add_argument("--max-steps", type=int, default=None)
        p.add_argument("--batch-size", type=int, default=None, help="per process")
        p.add_argument("--lr", type=float, default=None, help="peak learning rate (a resumed run reshapes its "
                       "schedule to this and --max-steps)")
        p.add_argument("--init", default=None, help="start a new run from exported weights of the same model "
                       "(.safetensors, same shape)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.set_defaults(func=func)

    p = sub.add_parser("vocode", help="synthesise audio from audio files (resynthesis) or .npy/.pt mels")
    p.add_argument("inputs", nargs="+", help="files, globs or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder: OUTDIR/<stem>.wav")
    p.add_argument("--model", default="student", choices=["student", "teacher", "griffin-lim"])
    p.add_argument("--checkpoint", default="default", help="a shipped checkpoint name or a folder")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--pitch-shift", type=float, default=1.0,
                   help="multiply the student's F0 by this (0.5-2.0; a pitch-driven student)")
    p.add_argument("--f0", default=None, help="vocode with this F0 instead of the predicted one: a contour "
                   "file for every input (.csv as `wavegen pitch` writes, or .npy of per-frame Hz, 0 unvoiced) "
                   "or a folder holding <stem>.csv or <stem>.npy per input")
    _add_refine(p)
    _add_precision(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_vocode)

    p = sub.add_parser("pitch", help="the F0 contour the vocoder reads from each input's mel, as CSV")
    p.add_argument("inputs", nargs="+", help="audio or .npy/.pt mel files, globs or folders")
    p.add_argument("-o", "--output", required=True, help="output folder: OUTDIR/<stem>.csv "
                   "(time_s, f0_hz (0 unvoiced), voicing_probability)")
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_pitch)

    p = sub.add_parser("eval", help="objective metrics of resynthesis, beside Griffin-Lim on the same mels")
    p.add_argument("reference", help="reference audio: a folder (searched recursively), a text file listing "
                                     "paths (e.g. a corpus's heldout.txt) or one file")
    p.add_argument("--model", default="student", choices=["student", "teacher", "griffin-lim"])
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N files only")
    p.add_argument("--temperature", type=float, default=1.0, help="noise scale of the student and the teacher")
    p.add_argument("--save-audio", type=Path, default=None, metavar="DIR",
                   help="also write every resynthesis there (<folder>__<folder>__<stem>__<model>.wav)")
    p.add_argument("--json", action="store_true")
    _add_refine(p)
    _add_precision(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="speed of every synthesis path on the same mel, in one run")
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--seconds", type=float, default=5.0, help="audio length for the student and Griffin-Lim")
    p.add_argument("--teacher-seconds", type=float, default=0.5, help="prefix generated by the cached teacher")
    p.add_argument("--naive-seconds", type=float, default=0.02, help="prefix generated by the naive teacher")
    p.add_argument("--batch", type=int, default=1, help="synthesise this many copies of the mel at once")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    _add_precision(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", help="export the student as TorchScript or ONNX ((mel, z) -> x)")
    p.add_argument("output")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"])
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("app", help="launch the Gradio demo on a checkpoint")
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=cmd_app)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        # Python's default filters: our warnings (UserWarnings, e.g. a mel that looks log10) show, one line each;
        # libraries' DeprecationWarnings and ResourceWarnings about their own internals do not (a "default" filter
        # here printed gradio's unclosed event loops before the app's URL and pandas deprecations per request)
        warnings.showwarning = _one_line_warning  # restored when the block exits
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
