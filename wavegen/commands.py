"""What each `wavegen` command does with the library (`wavegen.cli` parses the arguments and calls these).

Each `cmd_<name>(args)` takes the parsed arguments and returns the exit status; a user error is raised as one of
USER_ERRORS and printed by `wavegen.cli.main` in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from wavegen.audio import AudioError, MelError, atomic_write, load_audio, log_mel
from wavegen.checkpoint import CheckpointError, import_matching, initial_model
from wavegen.config import ConfigError, load_preset
from wavegen.corpus import RecipeError
from wavegen.data import CorpusError
from wavegen.export import ExportError
from wavegen.vocoder import ModelUnavailable, PitchError, check_pitch_shift

# what a user can get wrong (bad files, wrong conventions, missing checkpoints): one line, exit 1, no traceback;
# the commands over many inputs report such an error per input and go on
USER_ERRORS = (AudioError, MelError, CorpusError, CheckpointError, ConfigError, RecipeError, ExportError,
               ModelUnavailable, PitchError, FileExistsError)


def refuse_overwrite(path: Path, force: bool) -> None:
    """The one rule for every output file: never replace an existing one without --force."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite")


def cmd_mel(args: argparse.Namespace) -> int:
    audio = load_preset(args.preset).audio
    out = Path(args.output)
    refuse_overwrite(out, args.force)
    mel = log_mel(load_audio(args.input, audio.sample_rate), audio).numpy().astype(np.float32)
    atomic_write(out, lambda tmp: np.save(open(tmp, "wb"), mel))
    print(f"{out}: mel {mel.shape[0]} x {mel.shape[1]} frames")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from wavegen.data import add_pitch_labels, preprocess

    if args.labels_only:
        manifest = add_pitch_labels(args.corpus, workers=args.workers, labeller=args.labeller)
        print(f"{args.corpus}: F0 labels ({args.labeller}) for {len(manifest['utterances'])} utterances")
        return 0
    if args.output is None:
        raise SystemExit("wavegen preprocess: give the output folder (or --labels-only CACHE)")
    manifest = preprocess(args.corpus, args.output, load_preset(args.preset).audio, workers=args.workers,
                          labeller=args.labeller)
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
    from wavegen.stages import pitch_stage, teacher_stage
    from wavegen.train import fit

    section = "train" if args.stage == "teacher" else "pitch_train"
    preset = _with_overrides(load_preset(args.preset), section, args)
    cfg = getattr(preset, section)
    torch.manual_seed(cfg.seed)  # the initial weights too are a function of the seed
    make = teacher_stage if args.stage == "teacher" else pitch_stage
    stage = make(preset, initial_model(args.init, args.stage, preset))
    path = fit(stage, preset, cfg, args.data, args.out, resume=args.resume, device=args.device)
    print(f"{args.stage}: {path}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from wavegen.stages import distill_stage
    from wavegen.train import fit

    preset = _with_overrides(load_preset(args.preset), "distill_train", args)
    source = Path(args.teacher)
    folder = source if source.is_dir() else source.parent  # a checkpoint folder, or the teacher file's
    teacher = import_matching(folder / "teacher.safetensors" if source.is_dir() else source, "teacher", preset)
    pitch = None
    if preset.distill.f0_source == "predictor":
        path = Path(args.pitch) if args.pitch else folder / "pitch.safetensors"
        if not path.is_file():
            raise ConfigError(f"distill.f0_source is 'predictor' but {path} does not exist; give --pitch")
        pitch = import_matching(path, "pitch", preset)
    torch.manual_seed(preset.distill_train.seed)
    stage = distill_stage(preset, teacher, initial_model(args.init, "student", preset), pitch)
    path = fit(stage, preset, preset.distill_train, args.data, args.out, resume=args.resume, device=args.device)
    print(f"student: {path}")
    return 0


def expand_inputs(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """Files, globs and folders (searched recursively) -> (audio/mel files, patterns matching nothing)."""
    import glob

    from wavegen.audio import AUDIO_EXTENSIONS, MEL_EXTENSIONS

    wanted = AUDIO_EXTENSIONS + MEL_EXTENSIONS
    files, missing = [], []
    for pattern in patterns:
        matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))] or [Path(pattern)]
        found = False
        for match in matches:
            if match.is_dir():
                inside = sorted(p for p in match.rglob("*") if p.suffix.lower() in wanted and p.is_file())
                files += inside
                found = found or bool(inside)
            elif match.exists():
                files.append(match)
                found = True
        if not found:
            missing.append(pattern)
    return list(dict.fromkeys(files)), missing


def input_mel(path: Path, vocoder) -> torch.Tensor:
    """An input file's mel (1, n_mels, F): a .npy/.pt mel as it is, audio through the vocoder's frontend."""
    from wavegen.audio import MEL_EXTENSIONS, load_mel_file

    if path.suffix.lower() in MEL_EXTENSIONS:
        return load_mel_file(path, vocoder.audio)
    return vocoder.mel(load_audio(path, vocoder.audio.sample_rate))


def failure_line(path: Path, exc: Exception) -> str:
    """One error line that names the file once."""
    return str(exc) if str(path) in str(exc) else f"{path}: {exc}"


def cmd_vocode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wavegen.audio import save_audio
    from wavegen.contour import ContourSource
    from wavegen.vocoder import Vocoder

    check_pitch_shift(args.pitch_shift)  # before anything is read or written
    vocoder = Vocoder.load(args.checkpoint, device=args.device, precision=args.precision)
    vocoder.check_pitch_control(args.model, args.f0 is not None, args.pitch_shift)
    contours = None if args.f0 is None else ContourSource.open(args.f0)
    inputs, missing = expand_inputs(args.inputs)
    failures = [f"{pattern}: no such file, or no audio/mel files in it" for pattern in missing]
    out = Path(args.output)
    jobs: dict[Path, tuple[Path, object, object]] = {}  # target -> (source, mel, F0 or None)
    for path in inputs:
        target = out / f"{path.stem}.wav"
        try:
            if target in jobs:
                raise FileExistsError(f"{path}: same output name as {jobs[target][0]} ({target.name})")
            refuse_overwrite(target, args.force)
            mel = input_mel(path, vocoder)[0]
            jobs[target] = (path, mel, None if contours is None else contours.for_input(path, mel.shape[-1]))
        except USER_ERRORS as exc:
            failures.append(failure_line(path, exc))
    targets = list(jobs)
    if targets:
        out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(targets), desc=f"vocode ({args.model})", unit="file", disable=not targets)
    for first in range(0, len(targets), args.batch_size):
        chosen = targets[first:first + args.batch_size]
        wavs = vocoder.synthesize_many([jobs[t][1] for t in chosen], args.model, args.batch_size,
                                       temperature=args.temperature, seed=args.seed, pitch_shift=args.pitch_shift,
                                       refine_steps=args.refine_steps, refine_smoothing=args.refine_smoothing,
                                       f0s=None if contours is None else [jobs[t][2] for t in chosen])
        for target, wav in zip(chosen, wavs):
            save_audio(target, wav, vocoder.audio.sample_rate)
            bar.update(1)
    bar.close()
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    print(f"wrote {len(targets)} file(s) to {out}; {len(failures)} failed")
    return 1 if failures else 0


def cmd_pitch(args: argparse.Namespace) -> int:
    from wavegen.contour import contour_text
    from wavegen.vocoder import Vocoder

    inputs, missing = expand_inputs(args.inputs)
    failures = [f"{pattern}: no such file, or no audio/mel files in it" for pattern in missing]
    vocoder = Vocoder.load(args.checkpoint, device=args.device)
    out = Path(args.output)
    written = 0
    seconds_per_frame = vocoder.audio.hop_length / vocoder.audio.sample_rate
    for path in inputs:
        target = out / f"{path.stem}.csv"
        try:
            refuse_overwrite(target, args.force)
            f0, voicing = (t[0].numpy() for t in vocoder.pitch(input_mel(path, vocoder)))
        except USER_ERRORS as exc:
            failures.append(failure_line(path, exc))
            continue
        out.mkdir(parents=True, exist_ok=True)
        text = contour_text(f0, voicing, seconds_per_frame)
        atomic_write(target, lambda tmp, text=text: Path(tmp).write_text(text))
        written += 1
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    print(f"wrote {written} contour(s) to {out}; {len(failures)} failed")
    return 1 if failures else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from wavegen.evaluate import breakdown, evaluate, reference_voices
    from wavegen.vocoder import Vocoder

    vocoder = Vocoder.load(args.checkpoint, device=args.device, precision=args.precision)
    voices = reference_voices(args.reference)
    files = list(voices)[: args.limit]
    models = list(dict.fromkeys([args.model, "griffin-lim"]))
    failed: list[Path] = []

    def on_error(path: Path, exc: Exception) -> None:
        failed.append(path)
        print(f"error: {exc}", file=sys.stderr)

    report = evaluate(vocoder, files, models, temperature=args.temperature, save_to=args.save_audio, on_error=on_error,
                      refine_steps=args.refine_steps, refine_smoothing=args.refine_smoothing)
    if not files or len(failed) == len(files):
        raise CorpusError(f"{args.reference}: no reference file could be read ({len(failed)} failed), nothing evaluated")
    report["files"] = len(files) - len(failed)
    report["temperature"] = args.temperature
    report["refine_steps"], report["refine_smoothing"] = args.refine_steps, args.refine_smoothing
    if args.model != "griffin-lim":
        report["breakdown"] = breakdown(report, {str(p): v for p, v in voices.items()}, args.model)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    names = list(report[models[0]]["median"])
    print(f"median over {report['files']} file(s)   " + "  ".join(f"{n:>13}" for n in names))
    for model in models:
        print(f"{model:<28}" + "  ".join(f"{report[model]['median'][n]:>13.4f}" for n in names))
    if "breakdown" in report:
        print_breakdown(report["breakdown"], args.model)
    return 0


def print_breakdown(table: dict, model: str, baseline: str = "griffin-lim") -> None:
    """The per-voice and per-F0-band medians and the files where `model` loses to `baseline` on PESQ-wb."""
    for kind, title in (("voice", "voice"), ("f0_band", "median F0 of the reference")):
        print(f"\nby {title}: PESQ-wb / STOI / MR-STFT, {model} vs {baseline} (losses on PESQ-wb)")
        for name, row in table[kind].items():
            ours, theirs = row[model], row[baseline]
            print(f"  {name:<22} {row['files']:>4} files  " + "  ".join(
                f"{ours[m]:.3f} vs {theirs[m]:.3f}" for m in ("pesq_wb", "stoi", "stft")) + f"  ({row['losses']} lost)")
    losses = table["losses"]
    print(f"\n{model} loses to {baseline} on PESQ-wb in {len(losses)} file(s)" + (":" if losses else ""))
    for row in losses:
        print(f"  {row[model]:.3f} vs {row[baseline]:.3f}  {row['file']}")


def cmd_bench(args: argparse.Namespace) -> int:
    from wavegen.evaluate import benchmark
    from wavegen.vocoder import Vocoder

    if args.threads:
        torch.set_num_threads(args.threads)
    report = benchmark(Vocoder.load(args.checkpoint, device=args.device, precision=args.precision),
                       seconds=args.seconds,
                       teacher_seconds=args.teacher_seconds, naive_seconds=args.naive_seconds, batch=args.batch)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{report['audio_seconds']} s of audio x batch {report['batch']}, {report['threads']} thread(s), "
          f"{report['device']}; "
          f"GEMM ceiling {report['gemm_gflops']:.0f} GFLOP/s")
    print(f"{'path':<22}{'seconds':>10}{'RTF':>10}{'samples/s':>14}{'peak MB':>10}  note")
    for name, row in report["paths"].items():
        print(f"{name:<22}{row['seconds']:>10.3f}{row['rtf']:>10.4f}{row['samples_per_s']:>14,.0f}"
              f"{row['peak_rss_mb']:>10.0f}  {row['note']}")
    for key, value in report.items():
        if key.startswith(("speedup", "student_")):
            print(f"{key}: {value:,.3f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from wavegen.export import export_student
    from wavegen.vocoder import Vocoder

    vocoder = Vocoder.load(args.checkpoint, device="cpu")
    if vocoder.student is None:
        raise CheckpointError(f"{args.checkpoint}: has no student to export")
    out = Path(args.output)
    refuse_overwrite(out, args.force)
    print(f"wrote {export_student(vocoder.student, out, args.format)}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from app import launch

    launch(checkpoint=args.checkpoint, host=args.host, port=args.port)
    return 0


def _with_overrides(preset, section: str, args: argparse.Namespace):
    """Apply --max-steps / --batch-size / --lr to one training section of the preset."""
    changes = {k: v for k, v in (("max_steps", args.max_steps), ("batch_size", args.batch_size), ("lr", args.lr))
               if v is not None}
    if not changes:
        return preset
    return dataclasses.replace(preset, **{section: dataclasses.replace(getattr(preset, section), **changes)})
