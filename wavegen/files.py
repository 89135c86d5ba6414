"""Finding the audio files of a corpus: what evaluation and preprocessing both read, with no training code.

A corpus is a folder of audio files (searched recursively), an LJSpeech-style folder (`metadata.csv` +
`wavs/`), or a text file listing paths (one per line, relative to the file's folder; `#` starts a comment).
"""

from __future__ import annotations

from pathlib import Path

from wavegen.audio import AUDIO_EXTENSIONS


class CorpusError(ValueError):
    """The corpus or preprocessed folder cannot be used."""


def discover(corpus: str | Path) -> list[tuple[str, Path]]:
    """(key, path) for every audio file of a corpus; key is the path relative to the corpus root."""
    corpus = Path(corpus)
    if corpus.is_file():
        root = corpus.parent
        lines = [ln.strip() for ln in corpus.read_text().splitlines()]
        paths = [Path(ln) if Path(ln).is_absolute() else root / ln for ln in lines if ln and not ln.startswith("#")]
    elif (corpus / "metadata.csv").is_file() and (corpus / "wavs").is_dir():
        root = corpus
        ids = [ln.split("|", 1)[0].strip() for ln in (corpus / "metadata.csv").read_text().splitlines()]
        paths = [corpus / "wavs" / f"{i}.wav" for i in ids if i]
    elif corpus.is_dir():
        root = corpus
        paths = sorted(p for p in corpus.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    else:
        raise CorpusError(f"{corpus}: no such corpus (a folder, an LJSpeech folder or a file list)")
    if not paths:
        raise CorpusError(f"{corpus}: no audio files found ({', '.join(AUDIO_EXTENSIONS)})")
    return [(_key(p, root), p) for p in paths]


def _key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix().lstrip("/")
