"""Export the student for deployment without Python model code: TorchScript or ONNX.

The exported graph takes (mel (B, n_mels, F), z (B, F * hop)) and returns x (B, F * hop), so a
caller controls the noise and the output is reproducible. A pitch-driven student's graph also takes
f0 (B, F) in Hz and voicing (B, F) in [0, 1] (`Vocoder.pitch` gives both).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from wavegen.models import Student

FORMATS = ("torchscript", "onnx")


class ExportError(RuntimeError):
    """The export cannot be done here (a missing optional package, say)."""


class StudentGraph(nn.Module):
    """(mel, z[, f0, voicing]) -> x: the student's parallel pass with the noise as an input."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, mel: Tensor, z: Tensor, f0: Tensor | None = None, voicing: Tensor | None = None) -> Tensor:
        return self.student.sample(mel, z=z, f0=f0, voicing=voicing)[0]


def export_student(student: Student, out: str | Path, fmt: str, frames: int = 16) -> Path:
    """Write the student as TorchScript (trace) or ONNX (dynamic batch and length axes)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = StudentGraph(student.eval())
    mel = torch.full((1, student.cfg.n_mels, frames), -5.0)
    z = torch.randn(1, frames * student.hop)
    inputs = (mel, z) if student.source is None else (mel, z, torch.full((1, frames), 120.0), torch.ones(1, frames))
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(graph, inputs, check_trace=False)
        traced.save(str(out))
        return out
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError("ONNX export needs the packages onnx and onnxscript: pip install onnx onnxscript") from exc
    batch, frames_dim = torch.export.Dim("batch"), torch.export.Dim("frames")
    shapes = {"mel": {0: batch, 2: frames_dim}, "z": {0: batch, 1: torch.export.Dim("samples")}}
    names = ["mel", "z"]
    if student.source is not None:
        shapes.update(f0={0: batch, 1: frames_dim}, voicing={0: batch, 1: frames_dim})
        names += ["f0", "voicing"]
    torch.onnx.export(graph, inputs, str(out), input_names=names, output_names=["x"], dynamic_shapes=shapes)
    return out
