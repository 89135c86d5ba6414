"""Export the student for deployment without Python model code: TorchScript or ONNX.

The exported graph takes (mel (B, n_mels, F), z (B, F * hop)) and returns x (B, F * hop), so a
caller controls the noise and the output is reproducible.
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
    """(mel, z) -> x: the student's parallel pass with the noise as an input."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, mel: Tensor, z: Tensor) -> Tensor:
        return self.student.sample(mel, z=z)[0]


def export_student(student: Student, out: str | Path, fmt: str, frames: int = 16) -> Path:
    """Write the student as TorchScript (trace) or ONNX (dynamic batch and length axes)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = StudentGraph(student.eval())
    mel = torch.full((1, student.cfg.n_mels, frames), -5.0)
    z = torch.randn(1, frames * student.upsampler.hop)
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(graph, (mel, z), check_trace=False)
        traced.save(str(out))
        return out
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError("ONNX export needs the packages onnx and onnxscript: pip install onnx onnxscript") from exc
    torch.onnx.export(graph, (mel, z), str(out), input_names=["mel", "z"], output_names=["x"],
                      dynamic_shapes={"mel": {0: torch.export.Dim("batch"), 2: torch.export.Dim("frames")},
                                      "z": {0: torch.export.Dim("batch"), 1: torch.export.Dim("samples")}})
    return out
