"""F0 contour files: the CSV `wavegen pitch` writes and `wavegen vocode --f0` reads back, or a .npy.

CSV: a header `time_s,f0_hz,voicing_probability`, then one row per mel frame (frame f at f * hop / sr
seconds), F0 in Hz with 0 where unvoiced. A .npy holds the per-frame F0 in Hz, shape (frames,).
A user may edit either (draw a new melody, flatten a contour) and vocode with it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wavegen.vocoder import PitchError

CONTOUR_EXTENSIONS = (".csv", ".npy")
HEADER = ("time_s", "f0_hz", "voicing_probability")


def contour_text(f0: np.ndarray, voicing: np.ndarray, seconds_per_frame: float) -> str:
    """F0 (F,) in Hz (0 unvoiced) and voicing probability (F,) -> the CSV's text."""
    rows = [",".join(HEADER)] + [f"{i * seconds_per_frame:.4f},{hz:.2f},{p:.3f}"
                                 for i, (hz, p) in enumerate(zip(f0, voicing))]
    return "\n".join(rows) + "\n"


def read_contour(path: str | Path) -> np.ndarray:
    """A contour file -> F0 (F,) float32 in Hz, 0 where unvoiced. Raises PitchError (one line) on a file
    that is not one: unreadable, no f0_hz column, non-numeric, negative or non-finite values, empty."""
    path = Path(path)
    if path.suffix.lower() not in CONTOUR_EXTENSIONS:
        raise PitchError(f"{path}: an F0 file must be .csv (as `wavegen pitch` writes) or .npy")
    try:
        if path.suffix.lower() == ".npy":
            f0 = np.load(path, allow_pickle=False)
        else:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            if not rows or "f0_hz" not in rows[0]:
                raise PitchError(f"{path}: no f0_hz column (expected the header {','.join(HEADER)})")
            f0 = np.array([float(row["f0_hz"]) for row in rows])
    except (OSError, ValueError, TypeError, EOFError, UnicodeDecodeError) as exc:
        if isinstance(exc, PitchError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PitchError(f"{path}: unreadable F0 file ({first})") from exc
    if f0.dtype.kind not in "fiu" or f0.ndim != 1 or f0.size == 0:
        raise PitchError(f"{path}: expected one F0 value in Hz per frame, shape (frames,); got {f0.dtype} "
                         f"{tuple(f0.shape)}")
    if not np.isfinite(f0).all() or (f0 < 0).any():
        raise PitchError(f"{path}: F0 values must be finite and >= 0 (0 where unvoiced)")
    return f0.astype(np.float32)


def fit_contour(f0: np.ndarray, frames: int, path: str | Path) -> np.ndarray:
    """Check a contour against its mel: one value per frame, else a one-line PitchError."""
    if f0.shape[-1] != frames:
        raise PitchError(f"{path}: holds {f0.shape[-1]} F0 values, the input has {frames} mel frames; one "
                         f"value per frame is needed (make it with `wavegen pitch` on the same input)")
    return f0


@dataclass(frozen=True)
class ContourSource:
    """Where the F0 of each input comes from (`wavegen vocode --f0`): one contour file for every input
    (`shared`, read once) or a folder of per-input contours, <stem>.csv or <stem>.npy."""

    path: Path
    shared: np.ndarray | None  # the one file's contour; None for a folder

    @classmethod
    def open(cls, path: str | Path) -> ContourSource:
        """Checked before anything is vocoded: a missing path or an unreadable file is a PitchError."""
        path = Path(path)
        if path.is_dir():
            return cls(path, None)
        if not path.exists():
            raise PitchError(f"{path}: no such F0 file or folder")
        return cls(path, read_contour(path))

    def for_input(self, input_path: Path, frames: int) -> np.ndarray:
        """The F0 (frames,) to vocode `input_path` with; a one-line PitchError if the folder has no contour
        for it or its length differs from the input's mel frames."""
        if self.shared is not None:
            return fit_contour(self.shared, frames, self.path)
        found = [c for c in (self.path / f"{input_path.stem}{ext}" for ext in CONTOUR_EXTENSIONS) if c.is_file()]
        if not found:
            raise PitchError(f"{input_path}: no {input_path.stem}.csv or {input_path.stem}.npy in the --f0 folder "
                             f"{self.path}")
        return fit_contour(read_contour(found[0]), frames, found[0])
