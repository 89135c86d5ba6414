"""Objective metrics of resynthesis, and the speed benchmark of every synthesis path.

Metrics compare a reference waveform with its resynthesis from the reference's own mel:
multi-resolution STFT distance, mel L1, MFCC mel-cepstral distortion (dB), PESQ wide-band and
STOI at 16 kHz, log-F0 RMSE and median |error| (cents) and voicing decision error (the corpus labeller,
WORLD's DIO + StoneMask: 10x faster than pYIN, which made the metrics the slowest part of an evaluation), and
buzz: how much more periodic than the reference the resynthesis is above 4 kHz in voiced frames.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Callable

import librosa
import numpy as np
import torch
import torchaudio

from wavegen.audio import (AUDIO_EXTENSIONS, AudioError, load_audio, log_mel, pitch_labels, resample, save_audio,
                           stft_distance)
from wavegen.config import AudioConfig
from wavegen.files import discover
from wavegen.nn.hifigan import HiFiGANGenerator
from wavegen.refine import REFINE_SMOOTHING, REFINE_STEPS
from wavegen.vocoder import Vocoder

METRIC_RATE = 16000  # PESQ wide-band and STOI are defined at 16 kHz
MCD_COEFFS = 13  # c1..c12 (c0, the energy, is left out)
MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


def mel_cepstral_distortion(ref_mel: np.ndarray, syn_mel: np.ndarray) -> float:
    """MFCC-based MCD in dB between two natural-log mels (n_mels, F): DCT-II (ortho), c1..c12."""
    ref = librosa.feature.mfcc(S=ref_mel, n_mfcc=MCD_COEFFS, dct_type=2, norm="ortho")[1:]
    syn = librosa.feature.mfcc(S=syn_mel, n_mfcc=MCD_COEFFS, dct_type=2, norm="ortho")[1:]
    return float(np.mean(MCD_SCALE * np.sqrt(np.sum((ref - syn) ** 2, axis=0))))


def pitch_errors(ref: np.ndarray, syn: np.ndarray, audio: AudioConfig, f0_ref: np.ndarray | None = None
                 ) -> dict[str, float]:
    """F0 of the resynthesis against the reference's, both from `pitch_labels` (`f0_ref`: the reference's, if
    known): log-F0 RMSE and median |error| in cents over frames voiced in both, and the voicing decision error
    (fraction of frames)."""
    f0_ref = pitch_labels(ref, audio) if f0_ref is None else f0_ref
    f0_syn = pitch_labels(syn, audio)
    voiced_ref, voiced_syn = f0_ref > 0, f0_syn > 0
    both = voiced_ref & voiced_syn
    cents = 1200 * np.log2(f0_syn[both] / f0_ref[both])
    return {"f0_rmse_cents": float(np.sqrt(np.mean(cents**2))) if both.any() else math.nan,
            "f0_median_cents": float(np.median(np.abs(cents))) if both.any() else math.nan,
            "vde": float(np.mean(voiced_ref != voiced_syn))}


BUZZ_EDGE = 4000.0  # Hz: the band where real speech is mostly aperiodic
BUZZ_WINDOW = 0.04  # seconds
BUZZ_LAGS = (0.8, 1.25)  # pitch periods searched, so an F0 error does not hide the period


def high_band_periodicity(wav: np.ndarray, f0: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """(T,) waveform and (F,) F0 in Hz (0 unvoiced; frame f centred at sample f * hop) -> per voiced frame whose
    window and lags fit in wav and whose band is not silent: the largest normalised correlation of the
    waveform's band above BUZZ_EDGE (two biquad high-passes) with itself 0.8-1.25 periods later, in 40 ms Hann
    windows. About 0.15 for white noise, 0.7-1 for a harmonic band (whole-sample lags only: 0.69 for 150 Hz at
    16 kHz); empty if the Nyquist frequency is not above the edge."""
    rate, hop = audio.sample_rate, audio.hop_length
    if rate / 2 <= BUZZ_EDGE:
        return np.zeros(0)
    band = torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1)
    band = band / band.abs().max().clamp(min=1e-9)  # the biquads clamp to +-1; the correlations ignore the scale
    for _ in range(2):
        band = torchaudio.functional.highpass_biquad(band, rate, BUZZ_EDGE)
    band, size = band[0].double().numpy(), int(BUZZ_WINDOW * rate)
    window = np.hanning(size)
    found = []
    for frame in np.nonzero(f0 > 0)[0]:
        start = frame * hop - size // 2
        first, last = int(BUZZ_LAGS[0] * rate / f0[frame]), int(BUZZ_LAGS[1] * rate / f0[frame])
        if start < 0 or start + last + size > band.size:
            continue
        now = band[start:start + size] * window
        energy = now @ now
        if energy < 1e-10:
            continue
        later = np.lib.stride_tricks.sliding_window_view(band[start + first:start + last + size], size) * window
        found.append(float(np.max(later @ now / np.sqrt(energy * np.einsum("ij,ij->i", later, later) + 1e-20))))
    return np.array(found)


def buzz(ref: np.ndarray, syn: np.ndarray, f0_ref: np.ndarray, audio: AudioConfig) -> float:
    """The resynthesis's median `high_band_periodicity` minus the reference's, over the frames the reference's
    F0 labels call voiced: 0 as periodic above 4 kHz as the recording, > 0 buzzier (harmonics where speech has
    noise), < 0 noisier; NaN where no frame qualifies."""
    ours, theirs = high_band_periodicity(syn, f0_ref, audio), high_band_periodicity(ref, f0_ref, audio)
    if ours.size == 0 or theirs.size == 0:
        return math.nan
    return float(np.median(ours) - np.median(theirs))


def resynthesis_metrics(ref: np.ndarray, syn: np.ndarray, audio: AudioConfig, f0_ref: np.ndarray | None = None
                        ) -> dict[str, float]:
    """All metrics of one resynthesis; ref and syn (T,) float32 at audio.sample_rate, same length (`f0_ref`: the
    reference's F0 labels, if known)."""
    from pesq import PesqError, pesq
    from pystoi import stoi

    f0_ref = pitch_labels(ref, audio) if f0_ref is None else f0_ref  # one labelling for the F0 errors and buzz
    ref_t, syn_t = torch.from_numpy(ref)[None], torch.from_numpy(syn)[None]
    ref_mel, syn_mel = log_mel(ref_t, audio)[0].numpy(), log_mel(syn_t, audio)[0].numpy()
    ref16, syn16 = resample(ref, audio.sample_rate, METRIC_RATE), resample(syn, audio.sample_rate, METRIC_RATE)
    try:
        pesq_wb = float(pesq(METRIC_RATE, ref16, syn16, "wb"))
    except PesqError:
        pesq_wb = math.nan
    return {
        "stft": float(stft_distance(syn_t, ref_t, (512, 1024, 2048))),
        "mel_l1": float(np.mean(np.abs(ref_mel - syn_mel))),
        "mcd_db": mel_cepstral_distortion(ref_mel, syn_mel),
        "pesq_wb": pesq_wb,
        "stoi": float(stoi(ref16, syn16, METRIC_RATE, extended=False)),
        **pitch_errors(ref, syn, audio, f0_ref),
        "buzz": buzz(ref, syn, f0_ref, audio),
    }


F0_BANDS = ((0.0, 120.0), (120.0, 200.0), (200.0, math.inf))  # Hz: a reference's median F0 puts it in one


def reference_files(corpus: str | Path) -> list[Path]:
    """The reference files: one audio file, or a corpus as `wavegen preprocess` takes it (a folder,
    an LJSpeech folder, or a text file listing paths, such as a corpus's heldout.txt)."""
    return list(reference_voices(corpus))


def reference_voices(corpus: str | Path) -> dict[Path, str]:
    """The reference files and each one's voice: the first folder of its path in the corpus (the Asterisk
    recipe's voice folders, `en_US_f_Allison/...`), or "-" for files at the corpus's top level."""
    corpus = Path(corpus)
    if corpus.suffix.lower() in AUDIO_EXTENSIONS:
        return {corpus: "-"}
    return {path: key.split("/", 1)[0] if "/" in key else "-" for key, path in discover(corpus)}


def f0_band(f0_hz: float) -> str:
    """A median F0's band name, e.g. "120-200 Hz" ("unvoiced" for NaN: no voiced frame)."""
    for lo, hi in F0_BANDS:
        if lo <= f0_hz < hi:
            return f"< {hi:g} Hz" if lo == 0 else (f"> {lo:g} Hz" if hi == math.inf else f"{lo:g}-{hi:g} Hz")
    return "unvoiced"


def listening_name(path: Path, model: str) -> str:
    """A resynthesis's file name: the reference's last two folders and stem, and the model
    (voice/digits/one.wav -> voice__digits__one__student.wav): unique across a corpus's voices."""
    return "__".join(path.with_suffix("").parts[-3:] + (model,)) + ".wav"


def evaluate(vocoder: Vocoder, files: list[Path], models: list[str], seed: int = 0, temperature: float = 1.0,
             on_error: Callable[[Path, Exception], None] | None = None,
             save_to: Path | None = None, refine_steps: int = REFINE_STEPS,
             refine_smoothing: float = REFINE_SMOOTHING) -> dict[str, dict]:
    """Per-file and median metrics for each model on the same mels: {model: {"files": {...}, "median": {...}}}.

    The neural models' outputs take `refine_steps` mel-consistency steps at `refine_smoothing` (`Vocoder.synthesize`).
    `save_to`: also write each resynthesis there (named by `listening_name`), for listening.
    """
    rate, hop = vocoder.audio.sample_rate, vocoder.audio.hop_length
    per_model: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}
    references: dict[str, float] = {}
    for path in files:
        try:
            wav = load_audio(path, rate)
            wav = wav[: wav.size // hop * hop]
            mel = vocoder.mel(wav)
        except AudioError as exc:
            if on_error is not None:
                on_error(path, exc)
            continue
        f0_ref = pitch_labels(wav, vocoder.audio)
        references[str(path)] = float(np.median(f0_ref[f0_ref > 0])) if (f0_ref > 0).any() else math.nan
        for model in models:
            syn = vocoder.synthesize(mel, model, temperature=temperature, seed=seed,
                                     refine_steps=refine_steps, refine_smoothing=refine_smoothing)[0].numpy()
            if save_to is not None:
                save_audio(Path(save_to) / listening_name(path, model), syn, rate)
            # keyed by the whole path: names repeat across voices
            per_model[model][str(path)] = resynthesis_metrics(wav, syn, vocoder.audio, f0_ref)
    report = {m: {"files": rows, "median": _medians(rows)} for m, rows in per_model.items()}
    return {**report, "reference_f0_hz": references}


def breakdown(report: dict, voices: dict[str, str], model: str, baseline: str = "griffin-lim",
              metrics: tuple[str, ...] = ("pesq_wb", "stoi", "stft")) -> dict:
    """Where `model` stands against `baseline` in an `evaluate` report, beyond the medians: the files where it
    loses on PESQ-wb (lower) and the medians of `metrics` per voice (`voices`: {file: voice}) and per band of
    the reference's median F0 (`F0_BANDS`), for both. A regression on one kind of voice shows here even when the
    overall median moves up."""
    ours, theirs = report[model]["files"], report[baseline]["files"]
    losses = sorted((path for path in ours if ours[path]["pesq_wb"] < theirs[path]["pesq_wb"]),
                    key=lambda path: ours[path]["pesq_wb"] - theirs[path]["pesq_wb"])
    groups: dict[str, dict[str, list[str]]] = {"voice": {}, "f0_band": {}}
    for path in ours:
        groups["voice"].setdefault(voices.get(path, "-"), []).append(path)
        groups["f0_band"].setdefault(f0_band(report["reference_f0_hz"][path]), []).append(path)
    lost = set(losses)
    tables = {kind: {name: {"files": len(paths), "losses": sum(path in lost for path in paths),
                            **{who: _medians({p: {m: rows[p][m] for m in metrics} for p in paths})
                               for who, rows in ((model, ours), (baseline, theirs))}}
                     for name, paths in sorted(by.items())} for kind, by in groups.items()}
    return {"losses": [{"file": path, model: ours[path]["pesq_wb"], baseline: theirs[path]["pesq_wb"]}
                       for path in losses], **tables}


def _medians(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """Median of each metric over files, ignoring NaN (a metric undefined for a file); NaN if none is defined."""
    names = next(iter(rows.values())).keys() if rows else []
    defined = {n: [r[n] for r in rows.values() if not math.isnan(r[n])] for n in names}
    return {n: statistics.median(values) if values else math.nan for n, values in defined.items()}


# ----------------------------------------------------------------------------------------- speed


def gemm_ceiling(size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """GEMM GFLOP/s in `dtype` at the current thread count: the machine's practical ceiling, so the
    best of `repeats` (a median let a noisy neighbour lower the bar by 10-15 % between runs)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def student_flops_per_sample(vocoder: Vocoder, frames: int = 8) -> float:
    """FLOPs per output sample of one student pass, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    mel = torch.full((1, vocoder.audio.n_mels, frames), -5.0, device=vocoder.device)
    contour = torch.full((1, frames), 120.0, device=vocoder.device), torch.ones(1, frames, device=vocoder.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        vocoder.student.sample(mel, f0=contour[0], voicing=contour[1])
    return counter.get_total_flops() / (frames * vocoder.audio.hop_length)


def conditioning_flops_saved(vocoder: Vocoder) -> float:
    """FLOPs per sample the CPU path does not do against `student_flops_per_sample` (the reference pass): with
    an interpolating upsampler each layer's conditioning term (n_mels x 2G) runs per frame instead of per sample
    (`wavegen.nn.packed`), and the upsampler's last 1x1 (n_mels x n_mels) is folded into those weights."""
    cfg, hop = vocoder.student.cfg, vocoder.audio.hop_length
    if vocoder.device.type != "cpu" or cfg.upsampler != "interpolate" or not cfg.n_flows:
        return 0.0
    per_layer = 2 * cfg.n_mels * 2 * cfg.gate_channels
    layers = sum(cfg.layers)
    return per_layer * layers * (1 - 1 / hop) + 2 * cfg.n_mels * cfg.n_mels


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def speech_like(vocoder: Vocoder, seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic waveform (1, T) and its mel to benchmark with: a gliding harmonic tone with a
    syllable-rate envelope."""
    rate, hop = vocoder.audio.sample_rate, vocoder.audio.hop_length
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate) // hop * hop) / rate
    f0 = 150 * (1 + 0.25 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wav = sum(0.3 / k * np.sin(k * phase) for k in range(1, 10)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    wav = (0.5 * wav / np.abs(wav).max() + 0.003 * rng.standard_normal(t.size)).astype(np.float32)
    return torch.from_numpy(wav)[None].to(vocoder.device), vocoder.mel(wav)


def timed(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median seconds, peak RSS MB during the runs)."""
    reset_peak_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_rss_mb()


def benchmark(vocoder: Vocoder, seconds: float = 5.0, teacher_seconds: float = 0.5,
              naive_seconds: float = 0.02, repeats: int = 3, batch: int = 1) -> dict:
    """Every synthesis path on the same mel (repeated `batch` times), in one run; the teacher paths
    on a prefix of it. Samples and real-time factors count every item of the batch."""
    wav, mel = speech_like(vocoder, seconds)
    wav, mel = wav.repeat(batch, 1), mel.repeat(batch, 1, 1)
    hop, rate = vocoder.audio.hop_length, vocoder.audio.sample_rate
    total = mel.shape[-1] * hop * batch
    frames = max(1, round(teacher_seconds * rate / hop))  # the prefix the sequential paths run on
    rows: dict[str, dict] = {}

    def record(name: str, samples: int, elapsed: float, peak: float, note: str = "") -> None:
        rows[name] = {"samples": samples, "seconds": elapsed, "audio_seconds": samples / rate,
                      "rtf": elapsed / (samples / rate), "samples_per_s": samples / elapsed,
                      "peak_rss_mb": peak, "note": note}

    def teacher_pitch(frames: int) -> dict[str, torch.Tensor]:
        """A pitch-driven teacher's F0 and voicing for the first `frames` of the mel (nothing for a mel-only one)."""
        contour = vocoder.source_contour(mel[..., :frames], None, 1.0, "teacher")
        return {} if contour is None else {"f0": contour.f0, "voicing": contour.voicing}

    if vocoder.teacher is not None:  # training throughput: teacher-forced forward + backward
        x, m = wav[:, : frames * hop].clone(), mel[..., :frames].clone()
        with torch.inference_mode():
            pitch = teacher_pitch(frames)
        pitch = {k: v.clone() for k, v in pitch.items()}  # out of inference mode, for autograd
        elapsed, peak = timed(lambda: vocoder.teacher.log_prob(x, m, **pitch).mean().backward(), repeats)
        vocoder.teacher.zero_grad(set_to_none=True)
        record("teacher_forced_train", frames * hop * batch, elapsed, peak,
               "log_prob forward + backward (training throughput, no optimizer step)")
    with torch.inference_mode():
        if vocoder.student is not None:
            vocoders = {vocoder.precision: vocoder}
            if vocoder.precision != "fp32":  # the fp32 reference path, side by side
                vocoders["fp32"] = Vocoder(vocoder.audio, student=vocoder.student, pitch=vocoder.pitch_model,
                                           device=vocoder.device, precision="fp32")
            for precision, each in vocoders.items():
                each.synthesize(mel[..., :8], "student", seed=0)  # warm-up
                elapsed, peak = timed(lambda: each.synthesize(mel, "student", seed=0), repeats)
                name = "student" if each is vocoder else f"student_{precision}"
                record(name, total, elapsed, peak, f"parallel IAF, {precision}, chunks of {each.chunk_frames} frames, "
                       f"{REFINE_STEPS} mel-consistency steps")
            x = vocoder.synthesize(mel[..., :frames], "student", seed=0, refine_steps=0).to(vocoder.device)
            contour = vocoder.source_contour(mel[..., :frames], None, 1.0)
            f0, voicing = (None, None) if contour is None else contour[:2]
            vocoder.student.log_prob(x[:, :hop], mel[..., :1], *(c[:, :1] if c is not None else None
                                                                   for c in (f0, voicing)))  # warm-up
            elapsed, peak = timed(lambda: vocoder.student.log_prob(x, mel[..., :frames], f0, voicing), 1)
            record("student_log_prob", frames * hop * batch, elapsed, peak,
                   f"first {frames * hop} samples; sequential inverse, all flows; extrapolated linearly")
        if vocoder.teacher is not None:
            vocoder.teacher.generate(mel[..., :1], **teacher_pitch(1))  # warm-up (loads the compiled loop)
            elapsed, peak = timed(lambda: vocoder.synthesize(mel[..., :frames], "teacher", seed=0), 1)
            record("teacher_cached", frames * hop * batch, elapsed, peak,
                   f"first {frames * hop} samples, the compiled loop on the CPU; RTF extrapolated linearly")
            reference = max(1, frames // 8)  # the PyTorch step is slow: a shorter prefix
            elapsed, peak = timed(lambda: vocoder.teacher.generate(mel[..., :reference], compiled=False,
                                                                   **teacher_pitch(reference)), 1)
            record("teacher_cached_pytorch", reference * hop * batch, elapsed, peak,
                   f"first {reference * hop} samples, the PyTorch step (the compiled loop's reference)")
            length = max(1, round(naive_seconds * rate))
            start = time.perf_counter()
            vocoder.teacher.generate_naive(mel[..., : math.ceil(length / hop)], length=length,
                                           **teacher_pitch(math.ceil(length / hop)))
            record("teacher_naive", length * batch, time.perf_counter() - start, peak_rss_mb(),
                   f"first {length} samples, receptive field recomputed each step; extrapolated linearly")
        elapsed, peak = timed(lambda: vocoder.synthesize(mel, "griffin-lim"), repeats)
        record("griffin-lim", total, elapsed, peak, "32 iterations")
        if vocoder.audio.hop_length % 64 == 0:  # a peer: the fastest GAN vocoder of its class, same mel
            peer = HiFiGANGenerator(vocoder.audio.n_mels, vocoder.audio.hop_length).to(vocoder.device).eval()
            peer(mel[..., :8])  # warm-up
            elapsed, peak = timed(lambda: peer(mel), repeats)
            record("hifigan_v3_peer", total, elapsed, peak, "HiFi-GAN V3-sized generator, RANDOM weights: speed only, "
                   f"float32, {sum(p.numel() for p in peer.parameters()) / 1e6:.2f} M parameters")
    ceilings = {"fp32": gemm_ceiling()}
    if vocoder.device.type == "cpu" and vocoder.precision == "bf16":
        ceilings["bf16"] = gemm_ceiling(dtype=torch.bfloat16)
    report = {"threads": torch.get_num_threads(), "device": str(vocoder.device), "audio_seconds": seconds,
              "batch": batch, "precision": vocoder.precision,
              "gemm_gflops": ceilings["fp32"], **{f"gemm_gflops_{k}": v for k, v in ceilings.items()}, "paths": rows}
    if vocoder.student is not None:
        reference = student_flops_per_sample(vocoder)
        flops = reference - conditioning_flops_saved(vocoder)  # what the synthesis path computes
        achieved = flops * rows["student"]["samples_per_s"] / 1e9
        report["student_gflops"] = achieved
        report["student_mflop_per_sample"] = flops / 1e6
        report["student_mflop_per_sample_reference"] = reference / 1e6  # the flows' own pass, conditioning per sample
        report["student_fraction_of_ceiling"] = achieved / ceilings[vocoder.precision]  # its own arithmetic's
        for other in ("student_fp32", "teacher_cached", "teacher_cached_pytorch", "teacher_naive", "griffin-lim",
                      "hifigan_v3_peer"):
            if other in rows:
                report[f"speedup_student_vs_{other}"] = rows["student"]["samples_per_s"] / rows[other]["samples_per_s"]
    for fast, slow in (("teacher_cached", "teacher_cached_pytorch"), ("teacher_cached", "teacher_naive"),
                       ("student_log_prob", "teacher_cached")):
        if fast in rows and slow in rows:
            report[f"speedup_{fast}_vs_{slow}"] = rows[fast]["samples_per_s"] / rows[slow]["samples_per_s"]
    return report
