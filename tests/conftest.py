"""Shared fixtures: a tiny preset, a synthetic corpus whose mel determines the audio, tiny trained models.

Everything is made here, in temporary folders: no downloads, no files from the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavegen.config import load_preset

if "OMP_NUM_THREADS" not in os.environ:  # respect a limit set by whoever runs the suite
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption("--auto-precision", choices=["bf16", "fp32"], default=None,
                     help="resolve the vocoder's precision='auto' to this in-process, whatever the CPU: run the suite "
                          "on the path a CPU with (bf16) or without (fp32) native bf16 takes")


@pytest.fixture(scope="session", autouse=True)
def auto_precision(request):
    """With --auto-precision, every Vocoder built in-process with precision="auto" takes that path."""
    forced = request.config.getoption("--auto-precision")
    if forced is None:
        yield
        return
    import wavegen.vocoder

    resolve = wavegen.vocoder.resolve_precision
    patch = pytest.MonkeyPatch()
    patch.setattr(wavegen.vocoder, "resolve_precision",
                  lambda precision, device: resolve(forced if precision == "auto" else precision, device))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny():
    return load_preset("tiny")


def write_tone_corpus(root: Path, n_files: int, sample_rate: int, seed: int = 0) -> list[Path]:
    """Harmonic tones with a gliding f0 and a little noise: the mel determines the waveform well."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        seconds = rng.uniform(0.6, 1.2)
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        f0 = rng.uniform(120, 300) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        wav = sum(0.4 / k * np.sin(k * phase) for k in range(1, 4)) + 0.01 * rng.standard_normal(t.size)
        wav *= np.clip(np.minimum(t, t[-1] - t) * 10, 0, 1)  # fade in and out
        path = root / f"tone_{i:03d}.wav"
        sf.write(path, wav.astype(np.float32), sample_rate)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory, tiny) -> Path:
    root = tmp_path_factory.mktemp("tones")
    write_tone_corpus(root, 40, tiny.audio.sample_rate)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tone_corpus, tiny) -> Path:
    from wavegen.data import preprocess

    out = tmp_path_factory.mktemp("prep")
    preprocess(tone_corpus, out, tiny.audio, workers=1, progress=False)
    return out


def train_tiny(folder: Path, make_stage, cfg, data: Path, preset) -> Path:
    """Run the one training loop on the tiny corpus into `folder`, the model made after seeding."""
    from wavegen.train import fit

    torch.manual_seed(0)
    fit(make_stage(preset), preset, cfg, data, folder, progress=False)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher_run(tmp_path_factory, tiny_data, tiny) -> Path:
    """A tiny teacher trained for the preset's 200 steps (a few seconds)."""
    from wavegen.stages import teacher_stage

    return train_tiny(tmp_path_factory.mktemp("teacher_run"), teacher_stage, tiny.train, tiny_data, tiny)


@pytest.fixture(scope="session")
def tiny_pitch_run(tmp_path_factory, tiny_data, tiny) -> Path:
    """A tiny F0/voicing predictor trained for the preset's few steps."""
    from wavegen.stages import pitch_stage

    return train_tiny(tmp_path_factory.mktemp("pitch_run"), pitch_stage, tiny.pitch_train, tiny_data, tiny)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_teacher_run, tiny_pitch_run, tiny_data, tiny) -> Path:
    """A checkpoint folder like checkpoints/default: the tiny teacher, a briefly distilled pitch-driven
    student and the pitch predictor it runs on."""
    import shutil

    from wavegen.checkpoint import import_model
    from wavegen.stages import distill_stage
    from wavegen.train import fit

    run = tmp_path_factory.mktemp("student_run")
    teacher, _ = import_model(tiny_teacher_run / "teacher.safetensors", "teacher")
    torch.manual_seed(0)
    fit(distill_stage(tiny, teacher), tiny, tiny.distill_train, tiny_data, run, progress=False)
    folder = tmp_path_factory.mktemp("checkpoint")
    shutil.copy(tiny_teacher_run / "teacher.safetensors", folder / "teacher.safetensors")
    shutil.copy(run / "student.safetensors", folder / "student.safetensors")
    shutil.copy(tiny_pitch_run / "pitch.safetensors", folder / "pitch.safetensors")
    return folder
