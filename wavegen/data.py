"""Corpora: discovery, preprocessing into cached arrays, and aligned training segments.

A corpus is a folder of audio files (searched recursively), an LJSpeech-style folder
(`metadata.csv` + `wavs/`), or a text file listing paths. `preprocess` writes

    OUT/manifest.json          audio config, one entry per utterance (id, source, split, frames), failures
    OUT/audio/<id>.npy         (frames * hop,) float32 waveform
    OUT/mel/<id>.npy           (n_mels, frames) float32 log-mel
    OUT/f0/<id>.npy            (frames,) float32 F0 in Hz per mel frame, 0 where unvoiced

F0 labels come from WORLD's DIO tracker refined by StoneMask (`pyworld`, MIT licence) by default, the
fastest here (Praat is faster still, but GPL); `labeller="vote"` takes DIO, Harvest and pYIN by majority
(`audio.vote_labels`), about 30x slower (54x vs 1.6x real time on one core). The manifest records which
(`pitch_labeller`). A cache made before the labels existed gets them, or another labeller's, with
`wavegen preprocess --labels-only OUT`.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import librosa
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from tqdm import tqdm

from wavegen.audio import (DEFAULT_LABELLER, AudioError, atomic_write, check_labeller, load_audio,
                           log_mel, pitch_labels)
from wavegen.config import AudioConfig
from wavegen.files import CorpusError, discover  # noqa: F401 (CorpusError: the training side's error too)

HELDOUT_MODULUS = 20  # one file in 20 is held out for validation
HELDOUT_LIST = "heldout.txt"  # a corpus may pin its own split: one relative path per line
MANIFEST = "manifest.json"


def is_heldout(key: str, modulus: int = HELDOUT_MODULUS) -> bool:
    """The deterministic split rule: held out when int(md5(key)[:8], 16) % modulus == 0."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) % modulus == 0


def utterance_id(key: str) -> str:
    """A file-system-safe id: the key without extension, folders joined by '__'."""
    return str(Path(key).with_suffix("")).replace("/", "__")


def heldout_keys(corpus: Path) -> set[str] | None:
    listing = (corpus if corpus.is_dir() else corpus.parent) / HELDOUT_LIST
    if not listing.is_file():
        return None
    return {ln.strip() for ln in listing.read_text().splitlines() if ln.strip()}


def prepare_utterance(path: str | Path, audio: AudioConfig, top_db: float = 40.0,
                      peak: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Load, trim leading/trailing silence, peak-normalise and cut to whole frames.

    Returns wav (F * hop,) and log-mel (n_mels, F).
    """
    wav = load_audio(path, audio.sample_rate)
    trimmed, _ = librosa.effects.trim(wav, top_db=top_db, frame_length=audio.win_length,
                                      hop_length=audio.hop_length)
    level = float(np.abs(trimmed).max()) if trimmed.size else 0.0
    if level < 1e-4:
        raise AudioError(f"{path}: silent (peak {level:.2g}); nothing to learn from")
    frames = trimmed.size // audio.hop_length
    if frames < 2:
        raise AudioError(f"{path}: too short after trimming silence ({trimmed.size} samples)")
    wav = (trimmed[: frames * audio.hop_length] * (peak / level)).astype(np.float32)
    mel = log_mel(wav, audio).numpy()
    return wav, mel


def _label_one(job: tuple[str, str, AudioConfig, str]) -> str | None:
    """Write the F0 labels of one cached utterance; returns an error line or None."""
    uid, out, audio, labeller = job
    torch.set_num_threads(1)
    try:
        wav = np.load(Path(out) / "audio" / f"{uid}.npy")
        f0 = pitch_labels(wav, audio, labeller)
    except (ValueError, OSError) as exc:
        return f"{uid}: {str(exc).splitlines()[0]}"
    atomic_write(Path(out) / "f0" / f"{uid}.npy", lambda tmp: np.save(open(tmp, "wb"), f0))
    return None


def _preprocess_one(job: tuple[str, str, str, AudioConfig, str]) -> dict:
    key, path, out, audio, labeller = job
    torch.set_num_threads(1)
    uid = utterance_id(key)
    try:
        wav, mel = prepare_utterance(path, audio)
    except (AudioError, ValueError, OSError) as exc:
        return {"key": key, "source": path, "error": str(exc).splitlines()[0]}
    f0 = pitch_labels(wav, audio, labeller)
    for sub, array in (("audio", wav), ("mel", mel), ("f0", f0)):
        atomic_write(Path(out) / sub / f"{uid}.npy", lambda tmp, a=array: np.save(open(tmp, "wb"), a))
    return {"key": key, "id": uid, "source": path, "frames": int(mel.shape[1]),
            "seconds": round(wav.size / audio.sample_rate, 3)}


def preprocess(corpus: str | Path, out: str | Path, audio: AudioConfig, workers: int = 2,
               progress: bool = True, labeller: str = DEFAULT_LABELLER) -> dict:
    """Preprocess a corpus into `out`, F0 labels by `labeller` (`audio.pitch_labels`'s tracker); unreadable
    files are reported and skipped. Returns the manifest."""
    check_labeller(labeller)
    corpus, out = Path(corpus), Path(out)
    files = discover(corpus)
    pinned = heldout_keys(corpus)
    jobs = [(key, str(path), str(out), audio, labeller) for key, path in files]
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "mel").mkdir(parents=True, exist_ok=True)
    (out / "f0").mkdir(parents=True, exist_ok=True)
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = list(tqdm(pool.map(_preprocess_one, jobs, chunksize=4), total=len(jobs),
                                desc="preprocess", unit="file", disable=not progress))
    else:
        results = [_preprocess_one(j) for j in tqdm(jobs, desc="preprocess", unit="file", disable=not progress)]
    utterances, failed = [], []
    for result in results:
        if "error" in result:
            failed.append(result)
            tqdm.write(f"skipped: {result['error']}")
            continue
        held = result["key"] in pinned if pinned is not None else is_heldout(result["key"])
        utterances.append({**result, "split": "valid" if held else "train"})
    manifest = {"format": 1, "corpus": str(corpus), "audio": asdict(audio), "pitch_labels": True,
                "pitch_labeller": labeller, "utterances": utterances, "failed": failed}
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    return manifest


def add_pitch_labels(root: str | Path, workers: int = 2, progress: bool = True,
                     labeller: str = DEFAULT_LABELLER) -> dict:
    """(Re)label every utterance of a preprocessed folder in place: one made before F0 labels existed, or one
    labelled by another labeller."""
    check_labeller(labeller)
    root = Path(root)
    manifest = load_manifest(root)
    audio = AudioConfig(**manifest["audio"])
    (root / "f0").mkdir(exist_ok=True)
    jobs = [(u["id"], str(root), audio, labeller) for u in manifest["utterances"]]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx) as pool:
        errors = [e for e in tqdm(pool.map(_label_one, jobs, chunksize=8), total=len(jobs), desc="F0 labels",
                                  unit="file", disable=not progress) if e]
    if errors:
        raise CorpusError(f"{root}: {len(errors)} utterance(s) could not be labelled, first: {errors[0]}")
    manifest["pitch_labels"], manifest["pitch_labeller"] = True, labeller
    atomic_write(root / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    return manifest


def require_pitch_labels(root: str | Path, manifest: dict) -> None:
    if not manifest.get("pitch_labels"):
        raise CorpusError(f"{root}: this cache has no F0 labels (made before they existed); add them with "
                          f"`wavegen preprocess --labels-only {root}`")


def load_manifest(root: str | Path, audio: AudioConfig | None = None) -> dict:
    """Read a preprocessed folder's manifest; check its mel convention against `audio` if given."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise CorpusError(f"{root}: not a preprocessed corpus (no {MANIFEST}); run `wavegen preprocess` first")
    manifest = json.loads(path.read_text())
    if audio is not None and AudioConfig(**manifest["audio"]) != audio:
        raise CorpusError(f"{root}: preprocessed with {manifest['audio']}, but the preset's mel convention is "
                          f"{asdict(audio)}; preprocess again with the same preset")
    return manifest


class SegmentDataset(Dataset):
    """Aligned (audio (segment_frames * hop,), mel (n_mels, segment_frames)) pairs from cached arrays.

    Items are addressed as (utterance index, crop seed) so that a crop is a pure function of the
    sampler's output: training resumes exactly, whatever the number of workers. Utterances shorter
    than a segment are padded with silence (zeros, and the log floor in the mel). With `pitch`, items
    also carry the F0 labels (segment_frames,) in Hz, 0 where unvoiced.
    """

    def __init__(self, root: str | Path, audio: AudioConfig, split: str, segment_frames: int, pitch: bool = False):
        self.root, self.audio, self.segment_frames, self.pitch = Path(root), audio, segment_frames, pitch
        manifest = load_manifest(root, audio)
        if pitch:
            require_pitch_labels(root, manifest)
        self.items = [u for u in manifest["utterances"] if u["split"] == split]
        if not self.items:
            raise CorpusError(f"{root}: no utterances in the {split!r} split")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        uid = self.items[index]["id"]
        return (np.load(self.root / "audio" / f"{uid}.npy", mmap_mode="r"),
                np.load(self.root / "mel" / f"{uid}.npy", mmap_mode="r"))

    def crop(self, index: int, start_frame: int, frames: int) -> tuple[torch.Tensor, ...]:
        """(wav (frames * hop,), mel (n_mels, frames)[, f0 (frames,)]) from `start_frame` on."""
        wav, mel = self.load(index)
        hop = self.audio.hop_length
        mel_seg = np.full((mel.shape[0], frames), math.log(self.audio.log_floor), dtype=np.float32)
        wav_seg = np.zeros(frames * hop, dtype=np.float32)
        avail = min(frames, mel.shape[1] - start_frame)
        mel_seg[:, :avail] = mel[:, start_frame:start_frame + avail]
        wav_seg[: avail * hop] = wav[start_frame * hop:(start_frame + avail) * hop]
        if not self.pitch:
            return torch.from_numpy(wav_seg), torch.from_numpy(mel_seg)
        f0 = np.load(self.root / "f0" / f"{self.items[index]['id']}.npy", mmap_mode="r")
        f0_seg = np.zeros(frames, dtype=np.float32)
        f0_seg[:avail] = f0[start_frame:start_frame + avail]
        return torch.from_numpy(wav_seg), torch.from_numpy(mel_seg), torch.from_numpy(f0_seg)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = item
        spare = max(self.items[index]["frames"] - self.segment_frames, 0)
        start = int(np.random.default_rng(seed).integers(0, spare + 1))
        return self.crop(index, start, self.segment_frames)


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler (shuffled, sharded by rank), emitting (index, crop seed) items and
    able to start mid-epoch: `set_epoch(epoch, skip=n)` drops the first n items of this rank's shard."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        for position, index in enumerate(indices[self.skip:], start=self.skip):
            yield index, hash((self.seed, self.epoch, self.rank, position)) & 0x7FFFFFFF

    def __len__(self) -> int:
        return self.num_samples - self.skip
