"""Mel images of held-out files beside their resyntheses, for the model card's listening check.

    wavegen eval corpora/asterisk/heldout.txt --model teacher --save-audio runs/listen
    wavegen eval corpora/asterisk/heldout.txt --model student --save-audio runs/listen
    python scripts/listening_sheet.py runs/listen checkpoints/default/listening-mels.png REF.wav ...

One row per reference file (original | student | teacher | Griffin-Lim, one colour scale per row), and
per file the mean log-mel of its quietest 20 % of frames (noise in silences) and overall.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from app.images import colour_scale, mel_image
from wavegen.audio import load_audio, log_mel
from wavegen.config import load_preset
from wavegen.evaluate import listening_name

MODELS = ("student", "teacher", "griffin-lim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen", type=Path, help="the --save-audio folder of `wavegen eval`")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("references", nargs="+", type=Path)
    parser.add_argument("--preset", default="speech16k")
    args = parser.parse_args()
    audio = load_preset(args.preset).audio
    rows = []
    for ref in args.references:
        versions = {"original": ref} | {m: args.listen / listening_name(ref, m) for m in MODELS}
        mels = {name: log_mel(load_audio(path, audio.sample_rate), audio).numpy()
                for name, path in versions.items() if path.exists()}
        scale = colour_scale(*mels.values())
        rows.append(np.concatenate([mel_image(m, scale, (320, 160)) for m in mels.values()], axis=1))
        for name, mel in mels.items():
            frames = np.sort(mel.mean(axis=0))
            quiet = frames[: max(1, len(frames) // 5)].mean()
            print(f"{ref.parent.name}/{ref.name} {name}: quietest 20% frames {quiet:.2f}, overall {mel.mean():.2f}")
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows])
    Image.fromarray(sheet).save(args.output)
    print(f"columns: original | {' | '.join(MODELS)} -> {args.output}")


if __name__ == "__main__":
    main()
