import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from wavegen.audio import log_mel
from wavegen.data import (CorpusError, ResumableSampler, SegmentDataset, discover, is_heldout, load_manifest,
                          preprocess)
from tests.conftest import write_tone_corpus


def test_split_rule_is_the_md5_rule():
    keys = [f"voice/file_{i}.wav" for i in range(400)]
    held = [k for k in keys if is_heldout(k)]
    expected = [k for k in keys if int(hashlib.md5(k.encode()).hexdigest()[:8], 16) % 20 == 0]
    assert held == expected and 5 < len(held) < 40  # about one in twenty
    assert is_heldout("en_US_f_Allison/vm-deleted.g722") == (
        int(hashlib.md5(b"en_US_f_Allison/vm-deleted.g722").hexdigest()[:8], 16) % 20 == 0)


def test_discover_three_layouts(tmp_path, tiny):
    write_tone_corpus(tmp_path / "folder" / "nested", 3, tiny.audio.sample_rate)
    assert [k for k, _ in discover(tmp_path / "folder")] == [f"nested/tone_00{i}.wav" for i in range(3)]

    lj = tmp_path / "lj"
    write_tone_corpus(lj / "wavs", 2, tiny.audio.sample_rate)
    (lj / "metadata.csv").write_text("tone_000|Hello there.|Hello there.\ntone_001|Bye.|Bye.\n")
    assert [k for k, _ in discover(lj)] == ["wavs/tone_000.wav", "wavs/tone_001.wav"]

    listing = tmp_path / "list.txt"
    listing.write_text("folder/nested/tone_001.wav\n# a comment\n\nlj/wavs/tone_000.wav\n")
    assert [k for k, _ in discover(listing)] == ["folder/nested/tone_001.wav", "lj/wavs/tone_000.wav"]

    with pytest.raises(CorpusError, match="no audio files"):
        (tmp_path / "empty").mkdir()
        discover(tmp_path / "empty")


def test_preprocess_skips_a_corrupt_file_and_caches_the_rest(tmp_path, tiny):
    corpus = tmp_path / "corpus"
    write_tone_corpus(corpus, 6, tiny.audio.sample_rate)
    (corpus / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 20)
    sf.write(corpus / "silent.wav", np.zeros(4000, np.float32), tiny.audio.sample_rate)
    manifest = preprocess(corpus, tmp_path / "out", tiny.audio, workers=2, progress=False)
    assert len(manifest["utterances"]) == 6
    assert sorted(f["key"] for f in manifest["failed"]) == ["corrupt.wav", "silent.wav"]
    assert "corrupt.wav" in manifest["failed"][0]["error"]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["utterances"] == manifest["utterances"]
    for utt in manifest["utterances"]:
        wav = np.load(tmp_path / "out" / "audio" / f"{utt['id']}.npy")
        mel = np.load(tmp_path / "out" / "mel" / f"{utt['id']}.npy")
        assert mel.shape == (tiny.audio.n_mels, utt["frames"]) and wav.size == utt["frames"] * tiny.audio.hop_length
        assert abs(np.abs(wav).max() - 0.95) < 1e-5  # peak-normalised
        assert utt["split"] == ("valid" if is_heldout(utt["key"]) else "train")


def test_pinned_heldout_list_overrides_the_rule(tmp_path, tiny):
    corpus = tmp_path / "corpus"
    write_tone_corpus(corpus, 4, tiny.audio.sample_rate)
    (corpus / "heldout.txt").write_text("tone_002.wav\n")
    manifest = preprocess(corpus, tmp_path / "out", tiny.audio, workers=1, progress=False)
    assert [u["key"] for u in manifest["utterances"] if u["split"] == "valid"] == ["tone_002.wav"]


def test_segments_are_aligned(tiny_data, tiny):
    data = SegmentDataset(tiny_data, tiny.audio, "train", segment_frames=6)
    hop = tiny.audio.hop_length
    for seed in range(5):
        wav, mel = data[(seed % len(data), seed)]
        assert wav.shape == (6 * hop,) and mel.shape == (tiny.audio.n_mels, 6)
        # the cached mel segment is the mel of the audio segment (interior frames: no edge padding)
        recomputed = log_mel(wav, tiny.audio)
        torch.testing.assert_close(recomputed[:, 2:4], mel[:, 2:4], atol=1e-4, rtol=0)
    assert data[(0, 7)][0].equal(data[(0, 7)][0])  # a crop is a pure function of its seed


def test_short_utterances_are_padded_with_silence(tiny_data, tiny):
    data = SegmentDataset(tiny_data, tiny.audio, "train", segment_frames=10_000)
    wav, mel = data[(0, 0)]
    frames = data.items[0]["frames"]
    assert (wav[frames * tiny.audio.hop_length:] == 0).all()
    assert torch.allclose(mel[:, frames:], torch.tensor(np.log(tiny.audio.log_floor), dtype=torch.float32))


def test_sampler_shards_and_resumes_mid_epoch(tiny_data, tiny):
    data = SegmentDataset(tiny_data, tiny.audio, "train", 4)
    full = [ResumableSampler(data, 2, r, seed=3) for r in range(2)]
    for s in full:
        s.set_epoch(1)
    items = [list(s) for s in full]
    assert {i for i, _ in items[0]} | {i for i, _ in items[1]} == set(range(len(data)))  # shards cover all
    assert len(items[0]) == len(items[1]) == (len(data) + 1) // 2
    resumed = ResumableSampler(data, 2, 0, seed=3)
    resumed.set_epoch(1, skip=5)
    assert list(resumed) == items[0][5:]


def test_manifest_convention_mismatch_is_refused(tiny_data):
    from wavegen.config import load_preset

    with pytest.raises(CorpusError, match="preprocess again"):
        load_manifest(tiny_data, load_preset("speech16k").audio)
