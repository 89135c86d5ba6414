"""The public inference API: loading, synthesis paths, chunking, batching, export."""

import dataclasses

import pytest
import torch

from wavegen import Vocoder
from wavegen.checkpoint import CheckpointError
from wavegen.vocoder import ModelUnavailable


@pytest.fixture(scope="module")
def vocoder(tiny_checkpoint):
    return Vocoder.load(tiny_checkpoint, device="cpu", precision="fp32")  # equal to the flows: exact tests


def test_load_by_path_gives_both_models_and_the_convention(vocoder, tiny):
    assert vocoder.audio == tiny.audio
    assert vocoder.teacher is not None and vocoder.student is not None
    assert vocoder.available_models == ["student", "teacher", "griffin-lim"]


def test_load_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        Vocoder.load(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither"):
        Vocoder.load(tmp_path)
    (tmp_path / "student.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        Vocoder.load(tmp_path)


@pytest.mark.parametrize("model", ["student", "teacher", "griffin-lim"])
def test_every_path_gives_frames_times_hop_samples(vocoder, tiny, model):
    mel = torch.full((2, tiny.audio.n_mels, 3), -6.0)
    wav = vocoder.synthesize(mel, model, seed=1)
    assert wav.shape == (2, 3 * tiny.audio.hop_length) and torch.isfinite(wav).all() and wav.abs().max() <= 1


def test_seed_makes_synthesis_reproducible(vocoder, tiny):
    mel = torch.full((1, tiny.audio.n_mels, 4), -6.0)
    assert torch.equal(vocoder.synthesize(mel, seed=3), vocoder.synthesize(mel, seed=3))
    assert not torch.equal(vocoder.synthesize(mel, seed=3), vocoder.synthesize(mel, seed=4))


def test_unknown_or_missing_model_is_a_clear_error(tiny):
    bare = Vocoder.from_preset(tiny, device="cpu")
    mel = torch.full((tiny.audio.n_mels, 2), -6.0)
    with pytest.raises(ModelUnavailable, match="has no student"):
        bare.synthesize(mel, "student")
    with pytest.raises(ModelUnavailable, match="unknown model"):
        bare.synthesize(mel, "hifigan")
    assert bare.synthesize(mel, "griffin-lim").shape[-1] == 2 * tiny.audio.hop_length


def test_chunked_student_equals_one_pass_for_a_fixed_z(vocoder, tiny):
    frames = 37
    mel = vocoder.mel(torch.sin(torch.arange(frames * tiny.audio.hop_length) * 0.05))
    z = torch.randn(1, frames * tiny.audio.hop_length, generator=torch.Generator().manual_seed(0))
    f0, voicing, retuned = vocoder.source_contour(mel, None, 1.0)
    assert not retuned  # the mel's own pitch
    with torch.inference_mode():
        whole = vocoder.student.sample(mel, z=z, f0=f0, voicing=voicing)[0].clamp(-1, 1)
    chunk_frames, vocoder.chunk_frames = vocoder.chunk_frames, 5
    try:
        chunked = vocoder.synthesize(mel, "student", z=z, refine_steps=0)  # the flow's own sample
    finally:
        vocoder.chunk_frames = chunk_frames
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_refinement_brings_the_students_levels_to_the_mel_and_only_smoothed_when_retuned(vocoder, tiny):
    from wavegen.nn.envelope import RETUNED_SMOOTHING
    from wavegen.refine import match_mel

    frames = 37
    # the mel of a sine at 0.3 of full scale: levels a waveform reaches without clipping. (Refined towards a
    # full-scale sine's mel, the sample passes +-1 within a few steps and the final clip puts back the error the
    # steps removed: the error at 4 steps then depended on the weights, 0.13 to 0.52 of the raw sample's with
    # fixture seeds 0-6, against a bound of 0.5.)
    mel = vocoder.mel(0.3 * torch.sin(torch.arange(frames * tiny.audio.hop_length) * 0.05))
    z = torch.randn(1, frames * tiny.audio.hop_length, generator=torch.Generator().manual_seed(0))
    error = lambda wav: (vocoder.mel(wav) - mel).abs().mean()  # noqa: E731
    raw, *refined = (vocoder.synthesize(mel, "student", z=z, refine_steps=k, refine_smoothing=0) for k in (0, 1, 2, 4))
    # the steps are `match_mel`'s on the (clipped) sample refine_steps=0 returns, clipped once more ...
    torch.testing.assert_close(refined[-1], match_mel(raw, mel, tiny.audio, 4, smoothing=0).clamp(-1, 1))
    # ... and each brings the levels closer: with fixture seeds 0-6 the error fell every step, to 0.07-0.11 of the
    # raw sample's after 4 (test_refine bounds the steps' convergence on signals no training made)
    errors = [float(error(wav)) for wav in (raw, *refined)]
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 0.5 * errors[0], errors
    # the default (1-band smoothing) refines exactly what refine_steps=0 returns, clipped, and clips again,
    # whether or not the model's sample (it differs with the CPU that trained the fixture) reaches +-1
    for loud in (0.0, 3.0):  # +3 nats: the raw sample certainly clips
        raw = vocoder.synthesize(mel + loud, "student", z=z, refine_steps=0)
        default = vocoder.synthesize(mel + loud, "student", z=z)
        assert raw.abs().max() <= 1 and default.abs().max() <= 1
        torch.testing.assert_close(default, match_mel(raw, mel + loud, tiny.audio).clamp(-1, 1))
    assert (raw.abs() == 1).any()  # the loud case did clip
    f0, _ = vocoder.pitch(mel, check=False)
    with torch.inference_mode():
        raw_shifted = vocoder.synthesize(mel, "student", z=z, f0=f0, pitch_shift=1.5, refine_steps=0)
        torch.testing.assert_close(vocoder.synthesize(mel, "student", z=z, f0=f0, pitch_shift=1.5, refine_steps=4),
                                   match_mel(raw_shifted, mel, tiny.audio, 4, smoothing=RETUNED_SMOOTHING).clamp(-1, 1))


def test_packed_body_matches_the_flow_it_copies(vocoder, tiny):
    from wavegen.nn.packed import PackedBody

    flow = vocoder.student.flows[-1]
    x, cond = torch.randn(2, 1, 300), torch.randn(2, tiny.audio.n_mels, 300)
    source = torch.randn(2, flow.source.in_channels, 300)  # the tiny flows read harmonics of flow 0's phase
    with torch.inference_mode():
        reference = flow(x, cond, source)
        assert (reference - flow(x, cond, torch.zeros_like(source))).abs().max() > 1e-4  # the source matters
        exact = PackedBody(flow, torch.float32)  # same maths, GEMM layout: equal to float rounding
        torch.testing.assert_close(exact(x, cond, source), reference, atol=1e-5, rtol=1e-5)
        fast = PackedBody(flow, torch.bfloat16)
        error = (fast(x, cond, source) - reference).norm() / reference.norm()
        assert 0 < error < 1e-2  # bf16 operands (8-bit mantissa), float32 accumulation and gates
        assert torch.equal(fast(x, cond, source), fast(x, cond, source))  # reused buffers leak nothing
        with pytest.raises(ValueError, match="takes a source"):
            exact(x, cond)


def test_packed_flows_share_one_workspace_without_leaks(vocoder, tiny):
    from wavegen.nn.packed import PackedBody, pack

    flows = vocoder.student.flows
    shared = pack(flows, torch.bfloat16)
    assert all(body.workspace is shared[0].workspace for body in shared)
    with torch.inference_mode():
        for length in (300, 120, 300):  # shrinking and growing chunks reuse one allocation
            x, cond = torch.randn(2, 1, length), torch.randn(2, tiny.audio.n_mels, length)
            source = torch.randn(2, flows[0].source.in_channels, length)
            for flow, body in zip(flows, shared):
                torch.testing.assert_close(body(x, cond, source), PackedBody(flow, torch.bfloat16)(x, cond, source),
                                           atol=0, rtol=0)
            other = torch.randn_like(cond)  # a new conditioning tensor is copied in, not the cached one
            torch.testing.assert_close(shared[0](x, other, source),
                                       PackedBody(flows[0], torch.bfloat16)(x, other, source), atol=0, rtol=0)


def test_packed_body_streams_like_the_flow(vocoder, tiny):
    from wavegen.nn.packed import PackedBody

    flow = vocoder.student.flows[0]
    x, cond = torch.randn(1, 1, 200), torch.randn(1, tiny.audio.n_mels, 200)
    source = torch.randn(1, flow.source.in_channels, 200)
    with torch.inference_mode():
        whole = flow(x, cond, source)
        for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            packed = PackedBody(flow, dtype)
            cache, pieces = flow.init_cache(1, x.device), []
            for lo, hi in ((0, 5), (5, 120), (120, 200)):
                y, cache = packed.stream(x[..., lo:hi], cond[..., lo:hi], cache, source[..., lo:hi])
                pieces.append(y)
            error = (torch.cat(pieces, -1) - whole).norm() / whole.norm()
            assert error < tolerance, (dtype, error)
            _, reference = flow.stream(x, cond, flow.init_cache(1, x.device), source)  # the same cache format
            for mine, theirs in zip(cache, reference):
                assert (mine - theirs).norm() <= tolerance * theirs.norm() + 1e-6


def test_knots_are_the_interpolated_features_at_frame_rate(vocoder, tiny):
    from wavegen.nn.source import frames_to_samples

    upsampler, hop = vocoder.student.upsampler, tiny.audio.hop_length
    mel = torch.randn(2, tiny.audio.n_mels, 9)
    with torch.inference_mode():
        knots = upsampler.knots(mel)
        assert knots.values.shape == (2, tiny.audio.n_mels, 10) and knots.length == 9 * hop
        assert torch.equal(knots.samples(), upsampler.features(mel))
        assert torch.equal(knots.frames(3, 7).samples(), knots.samples()[..., 3 * hop:7 * hop])
        samples = frames_to_samples(mel, hop)  # frame f at sample f * hop, linear after it, the last one held
        assert torch.equal(samples[..., ::hop], mel) and torch.equal(samples[..., -hop:], mel[..., -1:].expand(-1, -1, hop))
        torch.testing.assert_close(samples[..., hop // 2], (mel[..., 0] + mel[..., 1]) / 2)


def test_packed_body_on_knots_equals_the_flow_on_its_samples(vocoder, tiny):
    """The conditioning projected per frame and interpolated (hop x fewer rows) is the per-sample pass, exactly
    up to float rounding, whole and streamed in frame-aligned pieces, with the upsampler's 1x1 folded in."""
    from wavegen.nn.packed import pack

    student, hop = vocoder.student, tiny.audio.hop_length
    mel = torch.randn(1, tiny.audio.n_mels, 12)
    with torch.inference_mode():
        knots, cond = student.upsampler.knots(mel), student.upsampler(mel)
        for k, flow in enumerate(student.flows):
            x = torch.randn(1, 1, cond.shape[-1])
            source = torch.randn(1, flow.source.in_channels, cond.shape[-1])
            whole = flow(x, cond, source)
            assert (whole - flow(x, cond * 1.5, source)).abs().max() > 1e-4  # the conditioning matters
            for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
                body = pack([flow], dtype, student.upsampler.projection())[0]
                error = (body(x, knots, source) - whole).norm() / whole.norm()
                assert error < tolerance, (k, dtype, error)
                cache, pieces = flow.init_cache(1, x.device), []
                for lo, hi in ((0, 1), (1, 8), (8, 12)):
                    y, cache = body.stream(x[..., lo * hop:hi * hop], knots.frames(lo, hi), cache,
                                           source[..., lo * hop:hi * hop])
                    pieces.append(y)
                error = (torch.cat(pieces, -1) - whole).norm() / whole.norm()
                assert error < tolerance, (k, dtype, "streamed", error)
            with pytest.raises(ValueError, match="knots for"):
                body(x[..., :-1], knots, source[..., :-1])


def test_bf16_student_stays_close_to_the_fp32_reference(tiny_checkpoint, vocoder, tiny):
    fast = Vocoder.load(tiny_checkpoint, device="cpu", precision="bf16")
    assert fast.precision == "bf16" and vocoder.precision == "fp32"
    frames = 37
    mel = vocoder.mel(torch.sin(torch.arange(frames * tiny.audio.hop_length) * 0.05))
    z = torch.randn(1, frames * tiny.audio.hop_length, generator=torch.Generator().manual_seed(0))
    reference = vocoder.synthesize(mel, "student", z=z)
    for chunk in (fast.chunk_frames, 5):  # whole and chunked
        fast.chunk_frames = chunk
        out = fast.synthesize(mel, "student", z=z)
        assert (out - reference).norm() / reference.norm() < 2e-2
    with pytest.raises(ValueError, match="precision must be"):
        Vocoder.load(tiny_checkpoint, device="cpu", precision="fp8")


def test_concurrent_student_calls_do_not_share_buffers_mid_call(vocoder, tiny):
    from concurrent.futures import ThreadPoolExecutor

    mels = [vocoder.mel(torch.sin(torch.arange(n * tiny.audio.hop_length) * f)) for n, f in ((41, 0.05), (23, 0.11))]
    zs = [torch.randn(1, m.shape[-1] * tiny.audio.hop_length, generator=torch.Generator().manual_seed(i))
          for i, m in enumerate(mels)]
    alone = [vocoder.synthesize(m, "student", z=z) for m, z in zip(mels, zs)]
    with ThreadPoolExecutor(2) as pool:  # as the app's queue (two at a time) would call it
        together = list(pool.map(lambda i: vocoder.synthesize(mels[i % 2], "student", z=zs[i % 2]), range(8)))
    for i, out in enumerate(together):
        torch.testing.assert_close(out, alone[i % 2], atol=0, rtol=0)


def test_many_inputs_are_batched_and_cut_back(vocoder, tiny):
    mels = [torch.full((tiny.audio.n_mels, n), -6.0) for n in (3, 7, 2, 5)]
    wavs = vocoder.synthesize_many(mels, "griffin-lim", batch_size=3)
    assert [w.shape[-1] for w in wavs] == [n * tiny.audio.hop_length for n in (3, 7, 2, 5)]


def test_resynthesis_is_close_to_the_input_for_the_trained_tiny_student(vocoder, tiny_data, tiny):
    """The distilled student tracks the mel it is given better than white noise does."""
    from wavegen.data import SegmentDataset
    from wavegen.audio import stft_distance

    wav, mel = SegmentDataset(tiny_data, tiny.audio, "valid", 16).crop(0, 0, 16)
    out = vocoder.synthesize(mel, "student", seed=0)
    noise = 0.1 * torch.randn_like(out)
    ffts = (64, 128, 256)
    assert stft_distance(out, wav[None], ffts) < stft_distance(noise, wav[None], ffts)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_export_matches_eager(vocoder, tiny, tmp_path):
    from wavegen.export import export_student

    path = export_student(vocoder.student, tmp_path / "student.pt", "torchscript")
    loaded = torch.jit.load(str(path))
    for frames in (3, 11):  # another length than the one traced
        mel = torch.randn(2, tiny.audio.n_mels, frames) - 5
        z = torch.randn(2, frames * tiny.audio.hop_length)
        f0 = torch.linspace(90.0, 260.0, frames).expand(2, frames).clone()
        f0[:, 1] = 0.0  # an unvoiced frame
        voicing = (f0 > 0).float()
        with torch.no_grad():
            torch.testing.assert_close(loaded(mel, z, f0, voicing),
                                       vocoder.student.sample(mel, z=z, f0=f0, voicing=voicing)[0], atol=1e-5, rtol=0)


def test_the_student_runs_on_a_given_or_shifted_contour_and_refuses_bad_ones(vocoder, tiny):
    from wavegen.vocoder import PitchError

    mel = torch.full((1, tiny.audio.n_mels, 6), -6.0)
    f0 = torch.tensor([0.0, 120.0, 125.0, 130.0, 0.0, 140.0])
    contour, voicing, retuned = vocoder.source_contour(mel, f0, 1.25)
    torch.testing.assert_close(contour[0], f0 * 1.25)
    assert retuned
    assert voicing[0].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    z = torch.randn(1, 6 * tiny.audio.hop_length)
    same = vocoder.synthesize(mel, z=z, f0=f0)
    assert torch.equal(same, vocoder.synthesize(mel, z=z, f0=f0.numpy()))
    assert not torch.equal(same, vocoder.synthesize(mel, z=z, f0=f0, pitch_shift=1.5))
    nan = f0.clone()
    nan[2] = float("nan")
    ceiling = vocoder.pitch_model.cfg.f0_max
    for model in ("student", "teacher"):  # both are pitch-driven: the same one-line errors
        for bad_f0, shift, message in ((f0, 2.5, "pitch shift"), (f0[:4], 1.0, "one per mel frame"),
                                       (-f0, 1.0, "non-negative"), (nan, 1.0, "finite"),
                                       (f0 * ceiling / 100, 1.0, "above this checkpoint's F0 range"),
                                       (f0 * ceiling / 200, 2.0, "above this checkpoint's F0 range")):
            with pytest.raises(PitchError, match=message) as refused:
                vocoder.synthesize(mel, model, f0=bad_f0, pitch_shift=shift)
            assert "\n" not in str(refused.value)
    with pytest.raises(PitchError, match="the griffin-lim reads F0 from the mel alone"):  # refused, not ignored
        vocoder.synthesize(mel, "griffin-lim", pitch_shift=1.25)


def test_a_pitch_driven_teacher_takes_the_contour_and_a_mel_only_one_refuses_it(vocoder, tiny):
    from wavegen.models import Teacher
    from wavegen.vocoder import PitchError

    assert vocoder.pitch_driven("teacher")  # the tiny preset's teacher reads the waveform one pitch period back
    mel = torch.full((1, tiny.audio.n_mels, 3), -6.0)
    f0 = torch.tensor([120.0, 125.0, 130.0])
    same = vocoder.synthesize(mel, "teacher", seed=0, f0=f0)
    assert torch.equal(same, vocoder.synthesize(mel, "teacher", seed=0, f0=f0.numpy()))
    assert not torch.equal(same, vocoder.synthesize(mel, "teacher", seed=0, f0=f0, pitch_shift=1.5))
    plain = Teacher(dataclasses.replace(tiny.teacher, pitch_lag=False), tiny.audio)
    mel_only = Vocoder(tiny.audio, plain, vocoder.student, pitch=vocoder.pitch_model, device="cpu", precision="fp32")
    assert not mel_only.pitch_driven("teacher")
    with pytest.raises(PitchError, match="the teacher reads F0 from the mel alone"):
        mel_only.synthesize(mel, "teacher", pitch_shift=1.25)


def test_a_student_of_flow_0_alone_synthesises_chunked_as_whole(vocoder, tiny):
    """The vocoder's streamed path for a student without WaveNet flows (nothing to pack, no conditioning):
    chunks equal one pass, and the trained flow 0 is what both run."""
    cfg = dataclasses.replace(tiny.student, layers=(), flow_source=0)
    student = type(vocoder.student)(cfg, tiny.audio)
    student.source.load_state_dict(vocoder.student.source.state_dict())
    lone = Vocoder(tiny.audio, student=student, pitch=vocoder.pitch_model, device="cpu", precision="fp32",
                   chunk_frames=5)
    frames = 23
    mel = vocoder.mel(torch.sin(torch.arange(frames * tiny.audio.hop_length) * 0.05))
    z = torch.randn(1, frames * tiny.audio.hop_length, generator=torch.Generator().manual_seed(0))
    f0, voicing, _ = lone.source_contour(mel, None, 1.0)
    with torch.inference_mode():
        whole = student.sample(mel, z=z, f0=f0, voicing=voicing)[0].clamp(-1, 1)
    chunked = lone.synthesize(mel, "student", z=z, refine_steps=0)
    assert whole.abs().max() > 1e-3
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
