"""Properties of the body, the teacher and the student: causality, step == parallel, invertibility."""

import dataclasses

import numpy as np
import pytest
import torch

from wavegen.config import ConfigError
from wavegen.distributions import gaussian_log_prob
from wavegen.models import Student, Teacher
from wavegen.nn import CausalWaveNet, MelUpsampler, shift_right


def randomise(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights (the flows start as the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))
    return module


def test_upsampler_gives_one_vector_per_sample(tiny):
    up = MelUpsampler(tiny.audio.n_mels, tiny.teacher.upsample_scales)
    assert up(torch.randn(2, tiny.audio.n_mels, 7)).shape == (2, tiny.audio.n_mels, 7 * tiny.audio.hop_length)
    odd = MelUpsampler(4, (3, 5))
    assert odd(torch.randn(1, 4, 6)).shape == (1, 4, 90)


def test_interpolating_upsampler_has_no_fixed_comb(tiny):
    """A steady mel must give a steady conditioning: anything periodic at the hop rate or its sub-strides
    would be imprinted on every output as a comb (the transposed upsampler's is, with any weights)."""
    steady = torch.full((1, tiny.audio.n_mels, 12), -4.0) + torch.randn(1, tiny.audio.n_mels, 1)
    scales = tiny.student.upsample_scales
    smooth = randomise(MelUpsampler(tiny.audio.n_mels, scales, "interpolate"), 0.3, seed=2)
    strided = randomise(MelUpsampler(tiny.audio.n_mels, scales, "transposed"), 0.3, seed=2)
    inner = slice(3 * tiny.audio.hop_length, 9 * tiny.audio.hop_length)  # away from the edges
    with torch.no_grad():
        assert smooth(steady)[..., inner].std(dim=-1).max() < 1e-5
        assert strided(steady)[..., inner].std(dim=-1).max() > 1e-2
    ramp = torch.linspace(-6, -2, 12).expand(1, tiny.audio.n_mels, 12)  # and it follows a changing mel
    out = smooth(ramp).detach()
    assert out.shape == (1, tiny.audio.n_mels, 12 * tiny.audio.hop_length)


@pytest.mark.parametrize("kernel", [2, 3])
def test_body_is_causal_and_step_equals_forward(tiny, kernel):
    cfg = dataclasses.replace(tiny.teacher, kernel_size=kernel)
    body = randomise(CausalWaveNet(cfg, in_channels=1, out_channels=3)).eval()
    x, c = torch.randn(2, 1, 150), torch.randn(2, cfg.n_mels, 150)
    y = body(x, c)
    x2 = x.clone()
    x2[..., 90:] += torch.randn_like(x2[..., 90:])
    y2 = body(x2, c)
    assert torch.equal(y[..., :90], y2[..., :90]) and not torch.allclose(y[..., 90:], y2[..., 90:])
    cache = body.init_cache(2, x.device)
    steps = []
    with torch.no_grad():
        for t in range(x.shape[-1]):
            y_t, cache = body.step(x[:, :, t], c[:, :, t], cache)
            steps.append(y_t)
    assert (torch.stack(steps, dim=-1) - y).abs().max() <= 1e-4


def test_receptive_field_is_what_the_config_says(tiny):
    body = randomise(CausalWaveNet(tiny.teacher, 1, 1))
    x = torch.zeros(1, 1, 200, requires_grad=True)
    body(x, torch.zeros(1, tiny.teacher.n_mels, 200))[0, 0, -1].backward()
    seen = (x.grad[0, 0] != 0).nonzero()
    assert 200 - int(seen.min()) == tiny.teacher.receptive_field


def teacher_and_pitch(tiny, frames: int, batch: int = 1, harmonics: int = 0, lag: bool = True, **changes):
    """A randomised tiny teacher (pitch-driven with harmonics and/or the pitch lag) and the F0/voicing keywords
    it takes."""
    cfg = dataclasses.replace(tiny.teacher, source_harmonics=harmonics, pitch_lag=lag, **changes)
    teacher = randomise(Teacher(cfg, tiny.audio), 0.2)
    return teacher, (contour(batch, frames) if cfg.pitch_driven else {})


@pytest.mark.parametrize("output", ["gaussian", "mol"])
@pytest.mark.parametrize("harmonics,lag", [(0, False), (3, False), (0, True), (3, True)])
def test_teacher_parameters_at_t_depend_only_on_the_past(tiny, output, harmonics, lag):
    teacher, pitch = teacher_and_pitch(tiny, 3, harmonics=harmonics, lag=lag, output=output)
    mel = torch.randn(1, tiny.audio.n_mels, 3)
    x = (0.5 * torch.randn(1, 3 * tiny.audio.hop_length)).clamp(-1, 1)
    t0 = 100
    base = teacher.params(x, mel, **pitch)
    x2 = x.clone()
    x2[:, t0:] = -x2[:, t0:]
    changed = teacher.params(x2, mel, **pitch)
    assert torch.equal(base[..., : t0 + 1], changed[..., : t0 + 1])  # x_t0 itself is not seen at t0
    assert not torch.allclose(base[..., t0 + 1:], changed[..., t0 + 1:])


def test_a_pitch_driven_teacher_hears_its_source_and_starts_as_the_mel_only_one(tiny):
    """The source enters the input path: a different F0 changes the parameters; with the source's input
    weights at their zero initialisation, it changes nothing and the teacher is the mel-only one it was loaded
    from (--init into a pitch-driven preset)."""
    teacher, pitch = teacher_and_pitch(tiny, 3)
    mel, x = torch.randn(1, tiny.audio.n_mels, 3), (0.5 * torch.randn(1, 3 * tiny.audio.hop_length)).clamp(-1, 1)
    higher = {"f0": pitch["f0"] * 1.3, "voicing": pitch["voicing"]}
    assert not torch.allclose(teacher.params(x, mel, **pitch), teacher.params(x, mel, **higher))
    plain, _ = teacher_and_pitch(tiny, 3, lag=False)
    started = Teacher(tiny.teacher, tiny.audio)
    assert set(started.state_dict()) - set(plain.state_dict()) == {"body.source.weight"}
    started.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(started.params(x, mel, **pitch), plain.params(x, mel))
    with pytest.raises(ValueError, match="needs F0 and voicing"):
        started.params(x, mel)


@pytest.mark.parametrize("output,compiled,harmonics,lag", [
    ("gaussian", True, 0, False), ("gaussian", False, 0, False), ("mol", False, 0, False),
    ("gaussian", True, 3, False), ("mol", False, 3, False),
    ("gaussian", True, 0, True), ("gaussian", False, 0, True), ("mol", False, 0, True), ("gaussian", True, 3, True)])
def test_cached_generation_equals_the_naive_generator(tiny, output, compiled, harmonics, lag, monkeypatch):
    from wavegen.nn import compiled as compiled_loop

    teacher, pitch = teacher_and_pitch(tiny, 2, batch=2, harmonics=harmonics, lag=lag, output=output)
    teacher.eval()
    # spans of 16 samples: the compiled loop folds the source in span by span, with the previous span's past
    monkeypatch.setattr(compiled_loop, "SPAN_VALUES", 2 * 16 * tiny.teacher.layers * 2 * tiny.teacher.gate_channels)
    mel = torch.randn(2, tiny.audio.n_mels, 2)
    cached = teacher.generate(mel, generator=torch.Generator().manual_seed(5), compiled=compiled, **pitch)
    naive = teacher.generate_naive(mel, generator=torch.Generator().manual_seed(5), **pitch)
    assert cached.shape == (2, 2 * tiny.audio.hop_length)
    assert (cached - naive).abs().max() <= 1e-4
    assert cached.std() > 0.01  # not a constant signal
    # and what it generated is scored by the parallel pass like any other waveform
    assert torch.isfinite(teacher.log_prob(cached, mel, **pitch)).all()


@pytest.mark.parametrize("kernel", [2, 3])
def test_compiled_loop_equals_the_pytorch_step_in_both_modes(tiny, kernel):
    from wavegen.nn import compiled

    cfg = dataclasses.replace(tiny.teacher, kernel_size=kernel)
    body = randomise(CausalWaveNet(cfg, in_channels=1, out_channels=2), 0.2).eval()
    cond, values = torch.randn(2, cfg.n_mels, 300), torch.randn(2, 300)
    assert compiled.available(body, values) and not compiled.available(body, values.double())
    assert not compiled.available(CausalWaveNet(dataclasses.replace(cfg, residual_channels=1), 1, 2), values)
    loop = compiled.CompiledLoop(body, log_scale_min=-7.0)
    for mode in (compiled.GENERATE, compiled.INVERT):
        state = loop.init_state(2)  # two calls share the explicit state: a block boundary at 120
        first, second = loop.run(cond[..., :120], values[:, :120], mode, state), loop.run(
            cond[..., 120:], values[:, 120:], mode, state)
        out, log_sigma = torch.cat([first[0], second[0]], 1), torch.cat([first[1], second[1]], 1)
        cache, x_prev = body.init_cache(2, values.device), torch.zeros(2, 1)
        with torch.no_grad():
            for t in range(300):
                params, cache = body.step(x_prev, cond[:, :, t], cache)
                mu, ls = params[:, 0], params[:, 1].clamp(min=-7.0)
                torch.testing.assert_close(log_sigma[:, t], ls, atol=1e-4, rtol=0)
                x_t = (mu + torch.exp(ls) * values[:, t]).clamp(-1, 1) if mode == compiled.GENERATE else (
                    values[:, t] - mu) * torch.exp(-ls)
                torch.testing.assert_close(out[:, t], x_t, atol=1e-4, rtol=1e-4)
                x_prev = out[:, t:t + 1]  # teacher-forced on the loop's own outputs: errors cannot compound


def test_pipelined_stack_equals_one_stage_and_the_pytorch_flows(tiny, monkeypatch):
    from wavegen.nn import compiled

    bodies = [randomise(CausalWaveNet(dataclasses.replace(tiny.teacher, layers=n), 1, 2), 0.2, seed=n).eval()
              for n in (2, 3, 4)]  # unequal depths: the stages are cut by layers
    layer_values = 9 * 2 * tiny.teacher.gate_channels
    monkeypatch.setattr(compiled, "SPAN_VALUES", 2 * 17 * layer_values)  # spans of 17 samples: many ticks
    cond, values = torch.randn(2, tiny.teacher.n_mels, 200), torch.randn(2, 200)
    results = {}
    for threads, batch in ((1, 1), (2, 1), (3, 1), (2, 2), (4, 2)):
        loop = compiled.CompiledLoop(bodies, log_scale_min=-7.0, threads=threads)
        assert len(loop.stages(batch)) - 1 == min(3, threads // batch)
        state = loop.init_state(batch)  # two calls share the state: a boundary inside a span
        first, second = (loop.run(cond[:batch, :, part], values[:batch, part], compiled.INVERT, state)
                         for part in (slice(0, 90), slice(90, None)))
        results[threads, batch] = torch.cat([first[0], second[0]], 1), torch.cat([first[1], second[1]], 1)
    for pipelined, single in (((2, 1), (1, 1)), ((3, 1), (1, 1)), ((4, 2), (2, 2))):
        # the same float32 arithmetic per body, whichever core runs it; log sigma is summed per stage
        torch.testing.assert_close(results[pipelined][0], results[single][0], atol=0, rtol=0)
        torch.testing.assert_close(results[pipelined][1], results[single][1], atol=1e-6, rtol=0)
    x, log_det = values[:1], torch.zeros(1, 200)  # the reference: PyTorch steps, body after body
    with torch.no_grad():
        for body in bodies:
            cache, previous, recovered = body.init_cache(1, x.device), torch.zeros(1, 1), torch.zeros_like(x)
            for t in range(200):
                params, cache = body.step(previous, cond[:1, :, t], cache)
                mu, ls = params[:, 0], params[:, 1].clamp(min=-7.0)
                recovered[:, t] = (x[:, t] - mu) * torch.exp(-ls)
                log_det[:, t] += ls
                previous = recovered[:, t:t + 1]
            x = recovered
    torch.testing.assert_close(results[1, 1][0], x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[1, 1][1], log_det, atol=1e-4, rtol=0)
    torch.testing.assert_close(results[2, 2][0][:1], x, atol=1e-4, rtol=1e-4)  # other spans, same result


@pytest.mark.parametrize("depths,threads,batch", [((8,), 2, 1), ((8, 8, 8), 2, 1), ((2, 3, 4), 3, 1), ((4, 4), 2, 2),
                                                   ((3,), 1, 1), ((2, 5), 4, 3)])
def test_plan_runs_every_stage_once_and_projects_every_column_once(tiny, depths, threads, batch):
    from wavegen.nn import compiled

    bodies = [CausalWaveNet(dataclasses.replace(tiny.teacher, layers=n), 1, 2) for n in depths]
    loop = compiled.CompiledLoop(bodies, log_scale_min=-7.0, threads=threads)
    stages = loop.stages(batch)
    items, pieces = loop.plan(batch, stages)
    assert items.shape[0] <= threads  # one parallel iteration per worker, never more workers than threads
    runs = sorted(int(i) for i in items.ravel() if i >= 0)
    assert runs == list(range((len(stages) - 1) * batch))
    covered = np.zeros((batch, loop.cond_w.shape[1]), int)
    for b, c0, c1 in pieces.reshape(-1, 3):
        if b >= 0:
            covered[b, c0:c1] += 1
    assert (covered == 1).all()
    if batch == 1 and threads > len(stages) - 1:  # an idle core: the stages' workers project nothing
        busy = {w for w in range(items.shape[0]) if (items[w] >= 0).any()}
        heaviest = max(busy, key=lambda w: sum(loop.bounds[stages[i + 1]] - loop.bounds[stages[i]]
                                                for i in items[w] if i >= 0))
        assert (pieces[heaviest, :, 0] < 0).all()


def test_projection_kernel_and_vectorised_exp():
    from wavegen.nn import compiled, kernels

    rng = np.random.default_rng(0)
    features = rng.standard_normal((13, 40)).astype(np.float32)
    weight = rng.standard_normal((13, 24)).astype(np.float32)
    for lo, hi, c0, c1 in ((0, 7, 0, 24), (5, 6, 8, 16), (10, 40, 3, 21)):  # odd and even counts, a lone step
        out = np.full((31, 24), np.nan, np.float32)
        kernels._project(features, weight, out, lo, hi, c0, c1)
        np.testing.assert_allclose(out[:hi - lo, c0:c1], features[:, lo:hi].T @ weight[:, c0:c1], rtol=1e-5, atol=1e-5)
        assert np.isnan(out[hi - lo:-1]).all() and np.isnan(out[:, :c0]).all()  # nothing else written
    x = np.concatenate([np.linspace(-90, 90, 1001), [0.0, -1e-8, 1e-8]]).astype(np.float32)
    e, n = np.empty_like(x), np.empty(x.shape, np.int32)
    kernels._exp_into(x, e, n)
    np.testing.assert_allclose(e, np.exp(np.clip(x, -80, 80).astype(np.float64)), rtol=1e-5)
    shifted = compiled.aligned(np.arange(10, dtype=np.float32)[1:])
    assert shifted.ctypes.data % compiled.CACHE_LINE == 0 and (shifted == np.arange(1, 10)).all()


def test_streamed_pieces_equal_one_pass_and_share_the_step_cache(tiny):
    body = randomise(CausalWaveNet(tiny.teacher, 1, 2), 0.2).eval()
    x, cond = torch.randn(2, 1, 150), torch.randn(2, tiny.teacher.n_mels, 150)
    with torch.no_grad():
        whole = body(x, cond)
        cache, pieces = body.init_cache(2, x.device), []
        for lo, hi in ((0, 3), (3, 70), (70, 71), (71, 150)):  # shorter and longer than the contexts
            y, cache = body.stream(x[..., lo:hi], cond[..., lo:hi], cache)
            pieces.append(y)
        torch.testing.assert_close(torch.cat(pieces, -1), whole, atol=1e-5, rtol=1e-5)
        stepped = body.init_cache(2, x.device)
        for t in range(150):  # the step cache after every sample is the stream cache after the last piece
            _, stepped = body.step(x[:, :, t], cond[:, :, t], stepped)
    for streamed, step_queue in zip(cache, stepped):
        torch.testing.assert_close(streamed, step_queue, atol=1e-5, rtol=1e-5)


def test_mixture_of_logistics_is_a_normalised_discrete_distribution(tiny):
    from wavegen.distributions import mol_log_prob

    bins = 256
    levels = torch.linspace(-1, 1, bins)
    params = torch.randn(1, 3 * 4, 1).repeat(1, 1, bins)
    params[:, 8:] = -2.0  # log-scales wide enough to span many bins
    total = torch.logsumexp(mol_log_prob(levels[None], params, -7.0, num_classes=bins), dim=-1)
    assert abs(float(total)) < 1e-3


@pytest.fixture
def student(tiny):
    return randomise(Student(tiny.student, tiny.audio), 0.15, seed=1).eval()


def contour(batch: int, frames: int, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """F0 (B, F) between 100 and 300 Hz with the first frame unvoiced, and its voicing: what the harmonic
    flow 0 runs on."""
    f0 = 100 + 200 * torch.rand(batch, frames, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    f0[:, 0] = 0.0
    return {"f0": f0, "voicing": (f0 > 0).to(dtype)}


def test_student_flows_start_as_the_identity_after_the_harmonic_flow(tiny):
    fresh = Student(tiny.student, tiny.audio)
    z = torch.randn(1, 2 * tiny.audio.hop_length)
    mel, pitch = torch.randn(1, tiny.audio.n_mels, 2), contour(1, 2)
    x, mu, log_sigma = fresh.sample(mel, z=z, **pitch)
    params = fresh.source_params(mel, pitch["f0"], pitch["voicing"])
    x0, log_sigma0, _ = fresh.source.excite(z, params, fresh.source.init_state(1))
    assert torch.equal(x, x0) and torch.equal(log_sigma, log_sigma0)
    plain = Student(dataclasses.replace(tiny.student, harmonic_noise=False, flow_source=0))  # mel-only: the identity
    x, mu, log_sigma = plain.sample(mel, z=z)
    assert torch.equal(x, z) and torch.equal(mu, torch.zeros_like(z)) and torch.equal(log_sigma, torch.zeros_like(z))


@pytest.mark.parametrize("compiled", [True, False])
def test_inverse_of_sample_is_z_and_the_two_views_agree(student, tiny, compiled):
    # seeded: flow 0's inverse filter amplifies float32 rounding by up to 1e5 for some random mels (float64: exact to
    # 1e-11), so an unseeded draw failed the 1e-3 bound now and then
    torch.manual_seed(0)
    mel = torch.randn(2, tiny.audio.n_mels, 3)
    z = torch.randn(2, 3 * tiny.audio.hop_length)
    pitch = contour(2, 3)
    with torch.no_grad():
        x, mu_tot, log_sigma_tot = student.sample(mel, z=z, **pitch)
    assert log_sigma_tot.abs().mean() > 0.05 and mu_tot.abs().mean() > 0.05  # not the identity
    torch.testing.assert_close(x, z * torch.exp(log_sigma_tot) + mu_tot, atol=1e-5, rtol=0)
    recovered, log_det = student.invert(x, mel, compiled=compiled, **pitch)  # sample by sample, flow by flow
    assert (recovered - z).abs().max() <= 1e-3
    sequential = gaussian_log_prob(recovered, torch.zeros_like(z), torch.zeros_like(z)) - log_det
    if compiled:  # the public log_prob is this computation (numba's fresh and cached code round apart, and
        # flow 0's inverse filter amplifies that: 1e-5 here)
        torch.testing.assert_close(student.log_prob(x, mel, **pitch), sequential, atol=1e-4, rtol=1e-5)
    parallel = gaussian_log_prob(x, mu_tot, log_sigma_tot)  # the Gaussian q(x_t | z_<t)
    torch.testing.assert_close(sequential, parallel, atol=1e-3, rtol=1e-4)


def test_log_det_matches_a_brute_force_jacobian(student, tiny):
    mel = torch.randn(1, tiny.audio.n_mels, 2)
    length = 2 * tiny.audio.hop_length
    z = torch.randn(length, dtype=torch.float64)
    student = student.double()
    mel, pitch = mel.double(), contour(1, 2, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: student.sample(mel, z=v[None], **pitch)[0][0], z)
    assert torch.allclose(jacobian.triu(1), torch.zeros_like(jacobian))  # autoregressive: lower triangular
    _, log_det = torch.linalg.slogdet(jacobian)  # (T, T) above, its log|det| here
    _, _, log_sigma_tot = student.sample(mel, z=z[None], **pitch)
    torch.testing.assert_close(log_det, log_sigma_tot.sum(), atol=1e-8, rtol=1e-8)


def test_every_flow_is_causal(student, tiny):
    mel = torch.randn(1, tiny.audio.n_mels, 2)
    cond = student.upsampler(mel).detach()
    assert all(flow.source is not None for flow in student.flows)  # the tiny preset's flows read a source
    for flow in student.flows:
        x = torch.randn(1, 1, cond.shape[-1], requires_grad=True)
        source = torch.randn(1, 2 * tiny.student.flow_source, cond.shape[-1], requires_grad=True)
        out = flow(shift_right(x), cond, source)
        t0 = 70
        out[0, :, t0].sum().backward()
        assert (x.grad[0, 0, t0:] == 0).all() and (x.grad[0, 0, :t0] != 0).any()
        assert (source.grad[0, :, t0 + 1:] == 0).all() and (source.grad[0, :, t0] != 0).any()  # conditioning: <= t


def test_the_flows_hear_flow_0s_phase_and_start_as_a_student_without_it(student, tiny):
    """With `flow_source`, the WaveNet flows read harmonics of flow 0's phase: they change the sample, and a
    student loaded from one without them (the new 1x1s at their zero start) draws exactly its sample."""
    mel, pitch = torch.randn(1, tiny.audio.n_mels, 3), contour(1, 3)
    z = torch.randn(1, 3 * tiny.audio.hop_length)
    params = student.source_params(mel, pitch["f0"], pitch["voicing"])
    channels = student.source.channels(params, z.shape[-1], None, tiny.student.flow_source)  # (B, 2 n, T)
    assert channels.shape == (1, 2 * tiny.student.flow_source, z.shape[-1])
    hop = tiny.audio.hop_length  # a second chunk, from the phase flow 0 carries, continues the whole pass
    state = student.source.excite(z[:, :hop], tuple(p[..., :2] for p in params), student.source.init_state(1))[2]
    rest = student.source.channels(tuple(p[..., 1:] for p in params), 2 * hop, state.phase, tiny.student.flow_source)
    torch.testing.assert_close(rest, channels[..., hop:], atol=1e-5, rtol=0)
    with torch.no_grad():
        heard = student.sample(mel, z=z, **pitch)[0]
        for flow in student.flows:
            flow.source.weight.zero_()
        deaf = student.sample(mel, z=z, **pitch)[0]
        plain = Student(dataclasses.replace(tiny.student, flow_source=0), tiny.audio).eval()
        missing = plain.load_state_dict(student.state_dict(), strict=False)
        assert missing.missing_keys == [] and sorted(missing.unexpected_keys) == [
            f"flows.{k}.source.weight" for k in range(len(student.flows))]
        torch.testing.assert_close(plain.sample(mel, z=z, **pitch)[0], deaf, atol=0, rtol=0)
    assert (heard - deaf).abs().max() > 1e-3


def test_a_dead_flow_is_found_and_restarted_without_changing_the_student(student, tiny):
    """A flow whose head never fires outputs a constant and gets no gradient; `restart_flow` gives it fresh
    weights that output the same constant, so the transform is unchanged and the flow can learn again."""
    mel, pitch = torch.randn(1, tiny.audio.n_mels, 4), contour(1, 4)
    z = torch.randn(1, 4 * tiny.audio.hop_length, generator=torch.Generator().manual_seed(2))
    dead = student.flows[1]
    with torch.no_grad():
        dead.head[1].weight.zero_()
        dead.head[1].bias.fill_(-1.0)  # every hidden unit below 0: the output is the last bias
        dead.head[3].bias.copy_(torch.tensor([0.01, -0.02]))
    found = student.flow_activity(mel, **pitch, generator=torch.Generator().manual_seed(0))
    assert found[0][0] > 0 and found[1][0] == 0.0
    torch.testing.assert_close(found[1][1], torch.tensor([0.01, -0.02]))

    def gradient() -> float:
        student.zero_grad()
        x, _, _ = student.sample(mel, z=z, **pitch)
        x.square().sum().backward()
        # every weight but the output bias (fresh flows start with a zero output layer: it learns first)
        return sum(p.grad.abs().sum().item() for name, p in dead.named_parameters() if name != "head.3.bias")

    assert gradient() == 0.0
    before = student.sample(mel, z=z, **pitch)[0].detach()
    torch.manual_seed(0)
    student.restart_flow(1, found[1][1])
    torch.testing.assert_close(student.sample(mel, z=z, **pitch)[0].detach(), before, atol=1e-7, rtol=0)
    assert student.flow_activity(mel, **pitch)[1][0] > 0 and gradient() > 0


def test_a_student_of_flow_0_alone_is_an_exact_iaf_without_an_upsampler(tiny):
    """`layers: []` beside the harmonic flow 0: nothing reads the mel per sample (no upsampler, no flow
    weights); x is flow 0's own output, autoregressive in z (lower-triangular Jacobian whose log|det| is
    log_sigma_tot), and the sequential inverse gives z back."""
    cfg = dataclasses.replace(tiny.student, layers=(), flow_source=0)
    student = randomise(Student(cfg, tiny.audio), 0.15, seed=1).double().eval()
    assert student.upsampler is None and not list(student.flows)
    assert not any(name.startswith(("upsampler.", "flows.")) for name in student.state_dict())
    torch.manual_seed(0)
    mel, pitch = torch.randn(1, tiny.audio.n_mels, 2, dtype=torch.float64), contour(1, 2, dtype=torch.float64)
    z = torch.randn(2 * tiny.audio.hop_length, dtype=torch.float64)
    x, mu_tot, log_sigma_tot = student.sample(mel, z=z[None], **pitch)
    params = student.source_params(mel, pitch["f0"], pitch["voicing"])
    assert torch.equal(x, student.source.excite(z[None], params, student.source.init_state(1))[0])
    jacobian = torch.autograd.functional.jacobian(lambda v: student.sample(mel, z=v[None], **pitch)[0][0], z)
    assert torch.allclose(jacobian.triu(1), torch.zeros_like(jacobian))
    assert jacobian.tril(-1).abs().max() > 1e-3  # the shift reads z_<t (the noise filter): not a fixed Gaussian
    torch.testing.assert_close(torch.linalg.slogdet(jacobian)[1], log_sigma_tot.sum(), atol=1e-8, rtol=1e-8)
    recovered, log_det = student.invert(x, mel, **pitch)
    torch.testing.assert_close(recovered, z[None], atol=1e-8, rtol=0)
    torch.testing.assert_close(log_det, log_sigma_tot, atol=1e-10, rtol=0)
    with pytest.raises(ConfigError, match="needs a flow"):
        dataclasses.replace(cfg, harmonic_noise=False)
