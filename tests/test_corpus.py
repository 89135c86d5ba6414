import hashlib

import numpy as np
import pytest
import soundfile as sf

from wavegen.corpus import RecipeError, asterisk_files, asterisk_heldout, build_asterisk


def fake_asterisk(root, tiny_audio_seconds=0.3):
    """A miniature /usr/share/asterisk/sounds: real G.722 files made with the codec itself."""
    import G722

    codec = G722.G722(16000, 64000)
    t = np.arange(int(16000 * tiny_audio_seconds)) / 16000
    pcm = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    payload = bytes(codec.encode(pcm))
    files = ["en_US_f_Allison/hello.g722", "en_US_f_Allison/digits/1.g722", "en_US_f_Allison/silence/1.g722",
             "en_US_f_Allison/beep.g722", "en_US_f_Allison/spy-jingle.g722", "en_US_f_Allison/vm-2tone.g722",
             "it_IT_m_Carlo/ciao.g722"]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
    (root / "en").symlink_to(root / "en_US_f_Allison")  # language links are not voices
    return pcm


def test_heldout_rule_matches_the_issue():
    for voice, rel in [("en_US_f_Allison", "vm-deleted.g722"), ("it_IT_m_Carlo", "digits/7.g722")]:
        expected = int(hashlib.md5(f"{voice}/{rel}".encode()).hexdigest()[:8], 16) % 20 == 0
        assert asterisk_heldout(voice, rel) == expected


def test_missing_packages_print_the_apt_line(tmp_path):
    with pytest.raises(RecipeError, match="apt-get install -y asterisk-core-sounds-en-g722"):
        asterisk_files(tmp_path / "nowhere")


def test_build_decodes_and_excludes(tmp_path):
    root = tmp_path / "sounds"
    pcm = fake_asterisk(root)
    found = {(v, r) for v, r, _ in asterisk_files(root)}
    assert found == {("en_US_f_Allison", "hello.g722"), ("en_US_f_Allison", "digits/1.g722"),
                     ("it_IT_m_Carlo", "ciao.g722")}
    stats = build_asterisk(tmp_path / "out", root=root, progress=False)
    assert sum(s.get("train_files", 0) + s.get("valid_files", 0) for s in stats.values()) == 3
    wav, rate = sf.read(tmp_path / "out" / "en_US_f_Allison" / "digits" / "1.wav", dtype="float32")
    assert rate == 16000 and wav.size == pcm.size
    # G.722 is lossy but a pure tone survives: correlation with the source is high
    reference = pcm.astype(np.float32) / 32768
    lag = np.argmax(np.correlate(wav[:2000], reference[:2000], "full")) - 1999
    aligned = np.roll(wav, -lag)[200:-200]
    assert np.corrcoef(aligned, reference[200:-200])[0, 1] > 0.95
    assert (tmp_path / "out" / "heldout.txt").exists() and (tmp_path / "out" / "ATTRIBUTION.txt").exists()
