"""Configuration: one frozen dataclass per component, filled in from YAML presets.

The dataclasses are the single source of truth; YAML files and CLI flags only fill them in. Every
dataclass checks its invariants on creation, so an inconsistent preset fails loudly at load time
rather than deep inside a training run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or inconsistent."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class AudioConfig:
    """The mel convention: part of every checkpoint.

    Default = Tacotron2 / HiFi-GAN: natural log of the slaney-normalised mel of the magnitude
    spectrum, centred reflect-padded Hann frames. A mel of T frames pairs with T * hop_length samples.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-5

    def __post_init__(self) -> None:
        _require(self.sample_rate > 0, f"sample_rate must be positive, got {self.sample_rate}")
        _require(self.win_length <= self.n_fft, f"win_length {self.win_length} > n_fft {self.n_fft}")
        _require(0 < self.hop_length <= self.win_length, f"hop_length {self.hop_length} out of range")
        _require(self.n_mels > 0, f"n_mels must be positive, got {self.n_mels}")
        _require(0 <= self.f_min < self.f_max <= self.sample_rate / 2,
                 f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")
        _require(self.log_floor > 0, "log_floor must be positive")


@dataclass(frozen=True)
class BodyShape:
    """The shape of a mel-conditioned causal WaveNet body, shared by the teacher and every flow.

    `upsample_scales` multiply to hop_length (checked by `Preset`). `upsampler` "interpolate": a
    frame-rate convolution, then linear interpolation to the samples (frame f at sample f * hop), then a
    1x1 conv; "transposed": transposed convolutions with strides `upsample_scales` (the first models';
    their strides imprint a fixed comb at the hop rate, DESIGN.md 4b). Dilations cycle 1, 2, ...,
    2**(dilation_cycle - 1).
    """

    dilation_cycle: int = 10
    kernel_size: int = 3
    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 64
    n_mels: int = 80
    upsample_scales: tuple[int, ...] = (16, 16)
    upsampler: str = "transposed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "upsample_scales", tuple(int(s) for s in self.upsample_scales))
        _require(self.upsampler in ("transposed", "interpolate"),
                 f"upsampler must be 'transposed' or 'interpolate', got {self.upsampler!r}")
        _require(self.dilation_cycle > 0, "dilation_cycle must be positive")
        _require(self.kernel_size >= 2, f"kernel_size must be >= 2, got {self.kernel_size}")
        _require(all(s > 0 for s in self.upsample_scales), "upsample scales must be positive")


@dataclass(frozen=True)
class WaveNetConfig(BodyShape):
    """A WaveNet: the teacher, or one IAF flow of the student."""

    layers: int = 20
    output: str = "gaussian"  # "gaussian" or "mol" (teacher only)
    n_mixtures: int = 10
    log_scale_min: float = -9.0
    # teacher only, > 0: harmonics 1..n of F0 (sin and cos, times voicing) and the voicing enter its input path
    # (`wavegen.nn.pitch_input.PitchInput`): p(x_t | x_<t, mel, F0)
    source_harmonics: int = 0
    # teacher only: the waveform one pitch period back, v_t x(t - T0_t + k) for k = -1, 0, 1, and the voicing
    # enter its input path (speech coding's long-term predictor); every tap lies in the past, so the density
    # stays exactly autoregressive (`wavegen.nn.pitch_input`)
    pitch_lag: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.layers > 0, "layers must be positive")
        _require(self.output in ("gaussian", "mol"), f"output must be 'gaussian' or 'mol', got {self.output!r}")
        _require(self.source_harmonics >= 0, "source_harmonics must be >= 0")

    @property
    def pitch_driven(self) -> bool:
        """Whether the network reads an F0 contour beside the mel (harmonics of it, the pitch lag or both)."""
        return self.source_harmonics > 0 or self.pitch_lag

    @property
    def dilations(self) -> tuple[int, ...]:
        return tuple(2 ** (i % self.dilation_cycle) for i in range(self.layers))

    @property
    def receptive_field(self) -> int:
        """Samples of input that one output sample sees (including itself)."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)


@dataclass(frozen=True)
class FlowConfig(BodyShape):
    """The Gaussian IAF student: `n_flows` mel-conditioned WaveNets, `layers[k]` layers in flow k.

    With `harmonic_noise`, a harmonic-plus-noise flow comes first (`wavegen.nn.source.HarmonicNoise`):
    its harmonic amplitudes and noise filter come from the mel's envelope and F0 (a frame network of
    `hn_channels` learns a correction; with `hn_calibrate`, their levels are then set so that the expected
    log-mel of the flow's output is the conditioning mel), never from z, so the student stays an exact IAF.
    """

    layers: tuple[int, ...] = (10, 10, 10, 10, 10, 10)
    log_scale_min: float = -7.0
    harmonic_noise: bool = False
    hn_channels: int = 64
    noise_taps: int = 128
    f0_min: float = 50.0  # the lowest F0 the harmonic flow sounds: it sets the number of harmonics
    # levels set so the expected log-mel of flow 0's output equals the conditioning mel (`HarmonicNoise.calibrate`)
    hn_calibrate: bool = False
    # harmonics 1..n of flow 0's phase (sin and cos) that each WaveNet flow reads as input beside x (0: none)
    flow_source: int = 0
    # flow 0 learns one output log-gain on top of the calibrated levels (`HarmonicNoise.log_gain`): the only
    # level knob when no WaveNet flow follows (calibration holds the level at the mel's)
    hn_gain: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        _require(all(n > 0 for n in self.layers), "every flow needs >= 1 layer")
        _require(len(self.layers) > 0 or self.harmonic_noise, "a student needs a flow: WaveNet flows or harmonic_noise")
        _require(self.noise_taps >= 2 and self.hn_channels > 0 and self.f0_min > 0,
                 "noise_taps must be >= 2, hn_channels and f0_min positive")
        _require(self.flow_source >= 0, "flow_source must be >= 0")
        _require(self.flow_source == 0 or self.harmonic_noise, "flow_source needs harmonic_noise (its phase)")
        _require(not self.hn_gain or self.harmonic_noise, "hn_gain needs harmonic_noise")

    @property
    def n_flows(self) -> int:
        return len(self.layers)

    def flow(self, k: int) -> WaveNetConfig:
        """The body configuration of flow k (its output is (mu, log_sigma))."""
        shape = {f.name: getattr(self, f.name) for f in fields(BodyShape)}
        return WaveNetConfig(**shape, layers=self.layers[k], output="gaussian", log_scale_min=self.log_scale_min)


@dataclass(frozen=True)
class PitchConfig:
    """The F0/voicing predictor (`wavegen.models.pitch`): conv layers over frames, pitch classified
    into bins of `bin_cents` from f0_min to f0_max."""

    n_mels: int = 80
    channels: int = 128
    kernel_size: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    bin_cents: float = 20.0
    f0_min: float = 40.0
    f0_max: float = 1000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        _require(0 < self.f0_min < self.f0_max, "need 0 < f0_min < f0_max")
        _require(self.bin_cents > 0 and self.kernel_size % 2 == 1, "bin_cents > 0, odd kernel_size")

    @property
    def n_bins(self) -> int:
        return int(1200 * math.log2(self.f0_max / self.f0_min) / self.bin_cents) + 1


@dataclass(frozen=True)
class TrainConfig:
    """One training loop's settings (teacher MLE and distillation alike)."""

    batch_size: int = 8
    segment_frames: int = 32
    max_steps: int = 100_000
    lr: float = 1e-3
    lr_min_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 1234
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    validate_every: int = 1000
    log_every: int = 50
    val_files: int = 16
    val_frames: int = 64
    sample_seconds: float = 0.5
    num_workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _require(self.batch_size > 0 and self.segment_frames > 0, "batch_size, segment_frames must be > 0")
        _require(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        _require(self.checkpoint_every > 0 and self.validate_every > 0 and self.log_every > 0,
                 "checkpoint_every, validate_every and log_every must be positive")


@dataclass(frozen=True)
class DistillConfig:
    """Probability density distillation loss weights (ClariNet)."""

    kl_weight: float = 1.0
    log_scale_clamp: float = -7.0
    log_scale_reg: float = 4.0
    stft_weight: float = 1.0
    stft_ffts: tuple[int, ...] = (512, 1024, 2048)
    mel_weight: float = 0.0  # weight of a log-mel L1 between the student's output and its conditioning mel
    f0_source: str = "labels"  # a pitch-driven student's F0 in training: the corpus's labels or "predictor"
    # the teacher's density tempered for the KL: p's sigma times this (still a Gaussian), < 1 to distil a teacher
    # whose noise floor is above the recordings' toward a cleaner sample
    teacher_temperature: float = 1.0
    # each training batch resampled to a random scale of every frequency, 0.7-1.4x (`stages.random_pitch`, what
    # the pitch stage hears): voices lower and higher than the corpus's
    pitch_augment: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stft_ffts", tuple(int(n) for n in self.stft_ffts))
        _require(self.teacher_temperature > 0, "distill.teacher_temperature must be positive")
        _require(self.f0_source in ("labels", "predictor"),
                 f"distill.f0_source must be 'labels' or 'predictor', got {self.f0_source!r}")
        _require(self.kl_weight >= 0 and self.stft_weight >= 0 and self.log_scale_reg >= 0 and self.mel_weight >= 0,
                 "loss weights must be non-negative")


@dataclass(frozen=True)
class Preset:
    """Everything a model family needs: the mel convention, both models and both training stages."""

    name: str = "custom"
    audio: AudioConfig = field(default_factory=AudioConfig)
    teacher: WaveNetConfig = field(default_factory=WaveNetConfig)
    student: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill_train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    pitch_train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        hop = self.audio.hop_length
        _require(self.pitch.n_mels == self.audio.n_mels,
                 f"pitch.n_mels {self.pitch.n_mels} != audio.n_mels {self.audio.n_mels}")
        for label, model in (("teacher", self.teacher), ("student", self.student)):
            _require(math.prod(model.upsample_scales) == hop,
                     f"{label}.upsample_scales {model.upsample_scales} multiply to "
                     f"{math.prod(model.upsample_scales)}, not hop_length {hop}")
            _require(model.n_mels == self.audio.n_mels,
                     f"{label}.n_mels {model.n_mels} != audio.n_mels {self.audio.n_mels}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        return _build(cls, data, "preset")


_SECTIONS = {"audio": AudioConfig, "teacher": WaveNetConfig, "student": FlowConfig,
             "train": TrainConfig, "distill_train": TrainConfig, "distill": DistillConfig,
             "pitch": PitchConfig, "pitch_train": TrainConfig}


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively: YAML/JSON/`weights_only` friendly."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for key, value in data.items():
        section = _SECTIONS.get(key) if cls is Preset else None
        kwargs[key] = _build(section, value, f"{where}.{key}") if section else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("wavegen.configs").iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A shipped preset by name (`tiny`, `speech16k`, `ljspeech22k`) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        resource = resources.files("wavegen.configs") / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(f"no preset named {str(name_or_path)!r}; shipped presets: {preset_names()}")
        text = resource.read_text()
    data = yaml.safe_load(text) or {}
    data.setdefault("name", path.stem)
    return Preset.from_dict(data)


def dump_preset(preset: Preset) -> str:
    return yaml.safe_dump(preset.to_dict(), sort_keys=False)

