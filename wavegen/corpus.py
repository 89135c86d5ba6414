"""Recipes that build a training corpus from material already on the machine.

`asterisk`: the Asterisk core sound prompts (Debian packages `asterisk-core-sounds-*-g722`),
professional studio recordings of four voices in five languages, 16 kHz G.722; CC-BY-SA-3.0 (en, es,
fr) and CC-BY-3.0 (it, ru), as the packages' copyright files say.
Decoded with the `G722` package (no ffmpeg), written as 16-bit wav files, one folder per voice,
with the held-out list (`heldout.txt`) and the packages' attribution beside them.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavegen.audio import save_audio
from wavegen.data import HELDOUT_LIST

ASTERISK_ROOT = Path("/usr/share/asterisk/sounds")
ASTERISK_LANGUAGES = ("en", "es", "fr", "it", "ru")
ASTERISK_RATE = 16000
ASTERISK_BITRATE = 64000
ASTERISK_EXCLUDE_DIRS = ("silence",)
ASTERISK_EXCLUDE_PATTERNS = ("*2tone*", "beep*", "spy-jingle*")


class RecipeError(RuntimeError):
    """A corpus recipe cannot run here (a missing package, say)."""


def asterisk_heldout(voice: str, relpath: str) -> bool:
    """The issue's split rule, on `voice/relpath` with the `.g722` extension."""
    return int(hashlib.md5(f"{voice}/{relpath}".encode()).hexdigest()[:8], 16) % 20 == 0


def asterisk_files(root: Path = ASTERISK_ROOT) -> list[tuple[str, str, Path]]:
    """(voice, relpath, path) of every usable prompt; voices are the real folders, not the links."""
    if not root.is_dir() or not any(_voices(root)):
        packages = " ".join(f"asterisk-core-sounds-{lang}-g722" for lang in ASTERISK_LANGUAGES)
        raise RecipeError(f"no Asterisk G.722 prompts under {root}. Install them with:\n"
                          f"  sudo apt-get install -y {packages}")
    found = []
    for voice_dir in _voices(root):
        for path in sorted(voice_dir.rglob("*.g722")):
            rel = path.relative_to(voice_dir)
            if rel.parts[0] in ASTERISK_EXCLUDE_DIRS or any(rel.match(p) for p in ASTERISK_EXCLUDE_PATTERNS):
                continue
            found.append((voice_dir.name, rel.as_posix(), path))
    return found


def _voices(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.count("_") >= 3)


def decode_g722(path: Path) -> np.ndarray:
    """A G.722 file -> (T,) float32 at 16 kHz."""
    import G722  # the PyPI package `g722`

    codec = G722.G722(ASTERISK_RATE, ASTERISK_BITRATE)
    pcm = np.asarray(codec.decode(path.read_bytes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def build_asterisk(out: str | Path, root: Path = ASTERISK_ROOT, progress: bool = True) -> dict:
    """Decode every prompt into OUT/<voice>/<relpath>.wav; write heldout.txt and ATTRIBUTION.txt.

    Returns per-voice statistics: files and minutes, train and held-out.
    """
    out = Path(out)
    files = asterisk_files(root)
    stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    heldout = []
    for voice, rel, path in tqdm(files, desc="asterisk", unit="file", disable=not progress):
        wav = decode_g722(path)
        if wav.size == 0:
            continue
        target = Path(voice) / Path(rel).with_suffix(".wav")
        save_audio(out / target, wav, ASTERISK_RATE)
        split = "valid" if asterisk_heldout(voice, rel) else "train"
        if split == "valid":
            heldout.append(target.as_posix())
        stats[voice][f"{split}_files"] += 1
        stats[voice][f"{split}_minutes"] += wav.size / ASTERISK_RATE / 60
    (out / HELDOUT_LIST).write_text("".join(f"{h}\n" for h in sorted(heldout)))
    _write_attribution(out)
    return {voice: {k: (int(v) if k.endswith("files") else round(v, 2)) for k, v in s.items()}
            for voice, s in sorted(stats.items())}


def _write_attribution(out: Path) -> None:
    parts = ["Asterisk core sound prompts. Licences, per the Debian copyright files below: CC-BY-SA-3.0 "
             "(https://creativecommons.org/licenses/by-sa/3.0/) for the English, Spanish and French voices, "
             "CC-BY-3.0 (https://creativecommons.org/licenses/by/3.0/) for the Italian and Russian voices.\n"
             "Decoded from G.722 to 16-bit WAV by `wavegen corpus asterisk`; otherwise unmodified.\n"]
    for lang in ASTERISK_LANGUAGES:
        copyright_file = Path(f"/usr/share/doc/asterisk-core-sounds-{lang}-g722/copyright")
        if copyright_file.is_file():
            parts.append(f"\n===== asterisk-core-sounds-{lang}-g722: {copyright_file} =====\n")
            parts.append(copyright_file.read_text(errors="replace"))
    (out / "ATTRIBUTION.txt").write_text("".join(parts))

