"""Checkpoints that describe themselves and never execute code on load.

* Released models: `<dir>/teacher.safetensors`, `<dir>/student.safetensors`; each file's metadata
  holds the format, the model kind and the whole preset as JSON, so the file alone rebuilds it.
* Training state: `<run>/checkpoints/step_XXXXXXXX.pt`, plain tensors and dicts written atomically,
  read back with `torch.load(weights_only=True)`; a corrupt latest file falls back to the previous.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from wavegen.audio import atomic_write, first_line
from wavegen.config import ConfigError, Preset
from wavegen.models import Student, Teacher
from wavegen.models.pitch import PitchPredictor

FORMAT = "1"
KINDS = {"teacher": Teacher, "student": Student, "pitch": PitchPredictor}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of the wrong kind, or not a safe format."""


def build_model(kind: str, preset: Preset) -> nn.Module:
    if kind == "teacher":
        return Teacher(preset.teacher, preset.audio)
    if kind == "student":
        return Student(preset.student, preset.audio)
    if kind == "pitch":
        return PitchPredictor(preset.pitch)
    raise CheckpointError(f"unknown model kind {kind!r}; expected one of {sorted(KINDS)}")


def export_model(path: str | Path, model: nn.Module, kind: str, preset: Preset, **card: Any) -> Path:
    """Write a model's weights as safetensors with its preset (and any `card` facts) in the metadata."""
    metadata = {"format": FORMAT, "kind": kind, "preset": json.dumps(preset.to_dict()),
                **{k: json.dumps(v) for k, v in card.items()}}
    return atomic_write(Path(path), lambda tmp: save_model(model, tmp, metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors model files are loaded (no pickles)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != FORMAT or "preset" not in metadata:
        raise CheckpointError(f"{path}: missing wavegen metadata (format {FORMAT}, preset)")
    return metadata


def import_model(path: str | Path, kind: str | None = None,
                 device: str | torch.device = "cpu") -> tuple[nn.Module, Preset]:
    """Rebuild a model from a safetensors file alone; strict: every tensor must match."""
    metadata = read_metadata(path)
    if kind is not None and metadata.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {metadata.get('kind')!r} model, expected {kind!r}")
    preset = Preset.from_dict(json.loads(metadata["preset"]))
    model = build_model(metadata["kind"], preset)
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except (RuntimeError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"{path}: weights do not match the model its preset describes ({exc})") from exc
    return model.to(device).eval(), preset


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write a training state (plain tensors, numbers, strings, lists and dicts)."""
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with `weights_only=True`: a pickle that would run code is refused."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: not a plain-tensor checkpoint ({first_line(exc)})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first_line(exc)})") from exc


def state_files(run_dir: str | Path) -> list[Path]:
    """A run's training states, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))


def load_latest_state(run_dir: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest readable training state of a run; a corrupt newer file is skipped with a warning."""
    for path in reversed(state_files(run_dir)):
        try:
            return load_state(path), path
        except CheckpointError as exc:
            warnings.warn(f"{exc}; falling back to the previous checkpoint", stacklevel=2)
    return None


def import_matching(path: Path, kind: str, preset: Preset) -> nn.Module:
    """Exported weights of `kind` whose mel convention is the preset's (else a one-line ConfigError)."""
    model, source = import_model(path, kind)
    if source.audio != preset.audio:
        raise ConfigError(f"the {kind} model's mel convention {source.audio} differs from the preset's")
    return model


def initial_model(path: str | None, kind: str, preset: Preset) -> nn.Module | None:
    """--init: start a new run from exported weights (a resumed run ignores it). The model is the preset's:
    options that change no parameter (e.g. `hn_calibrate`) follow the preset, and parts the weights lack (a
    module the preset adds, e.g. a teacher's source input) keep their initialisation; every part both have must match."""
    if path is None:
        return None
    weights, _ = import_model(Path(path), kind)
    model = build_model(kind, preset)
    ours, theirs = model.state_dict(), weights.state_dict()
    if theirs.keys() - ours.keys() or any(ours[k].shape != theirs[k].shape for k in theirs):
        raise ConfigError(f"{path}: its {kind} shape differs from the preset's; --init needs the same shape")
    model.load_state_dict(theirs, strict=False)
    new = sorted({key.rsplit(".", 1)[0] for key in ours.keys() - theirs.keys()})  # modules, e.g. flows.0.source
    if new:
        print(f"--init: {path} has no {', '.join(new)}; those start from the preset's initialisation")
    return model
