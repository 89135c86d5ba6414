"""A bounded load test of the web demo: 8 users at once, each with its own gradio_client, on loopback.

Every caller sends its requests one after another (a user waits for the answer before pressing again), so
at most 8 events sit in the queue (size 16): this checks that concurrent requests are all answered,
each with its own audio, that memory stays bounded, and that the server is healthy afterwards. Latencies
(client side: upload, queue wait, synthesis, download) go to stdout and test-artifacts/load.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import TimeoutError as FutureTimeout  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from app import build_demo, launch_options  # noqa: E402
from wavegen.models import Student, Teacher
from wavegen.models.pitch import PitchPredictor  # noqa: E402
from wavegen.vocoder import Vocoder  # noqa: E402

from tests.test_app import ARTIFACTS, free_port  # noqa: E402

CALLERS = 8
GOOD_PER_CALLER = 4  # plus one corrupt file each
MODELS_CYCLE = ("student", "griffin-lim")
SHORTEST, LONGEST = 0.5, 2.0  # seconds of input audio
DEADLINE_S = 120.0  # hard bound on the whole load phase: callers stop sending once it has passed
MEMORY_BOUND_MB = 500.0
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@dataclass(frozen=True)
class Request:
    caller: int
    path: Path
    model: str
    expected_samples: int | None  # None: a corrupt file, which must be refused by name


@dataclass(frozen=True)
class Outcome:
    request: Request
    kind: str  # "ok", "app_error", "queue_full", "timeout" or "unexpected"
    seconds: float
    detail: str = ""


def memory_mb() -> dict[str, float]:
    """This process's resident set now (VmRSS) and at its peak so far (VmHWM), in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith(("VmRSS", "VmHWM")))
    return {name: int(value.split()[0]) / 1024 for name, value in fields.items()}  # values are in kB


def write_tone(path: Path, samples: int, sample_rate: int) -> Path:
    t = np.arange(samples) / sample_rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)
    return path


def plan_requests(root: Path, sample_rate: int, hop: int) -> list[list[Request]]:
    """Per caller: 4 tones, each of a length no other request has (so a mixed-up answer shows), and one
    corrupt file at a different position per caller."""
    lengths = np.linspace(SHORTEST * sample_rate, LONGEST * sample_rate, CALLERS * GOOD_PER_CALLER)
    plans = []
    for caller in range(CALLERS):
        plan = []
        for i in range(GOOD_PER_CALLER):
            samples = int(lengths[caller * GOOD_PER_CALLER + i]) + 7  # +7: not a whole number of hops
            path = write_tone(root / f"tone_{caller}_{i}.wav", samples, sample_rate)
            model = MODELS_CYCLE[(caller + i) % len(MODELS_CYCLE)]
            plan.append(Request(caller, path, model, samples // hop * hop))
        corrupt = root / f"corrupt_{caller}.wav"
        corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
        plan.insert(caller % (GOOD_PER_CALLER + 1), Request(caller, corrupt, "student", None))
        plans.append(plan)
    return plans


def send(client, request: Request, deadline: float, sample_rate: int) -> Outcome:
    """One request, waited for at most until the deadline, classified."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    start = time.perf_counter()
    try:
        job = client.submit(handle_file(str(request.path)), request.model, 1.0, api_name="/vocode")
        result = job.result(timeout=max(deadline - time.monotonic(), 0.1))
    except FutureTimeout:
        job.cancel()
        return Outcome(request, "timeout", time.perf_counter() - start)
    except AppError as exc:
        return Outcome(request, "app_error", time.perf_counter() - start, str(exc))
    except QueueError as exc:
        return Outcome(request, "queue_full", time.perf_counter() - start, str(exc))
    except Exception as exc:  # noqa: BLE001 -- anything else is a finding, reported by the test
        return Outcome(request, "unexpected", time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    audio, rate = sf.read(result[0], dtype="int16")
    if request.expected_samples is None or rate != sample_rate or audio.shape != (request.expected_samples,):
        return Outcome(request, "unexpected", seconds, f"answered with {audio.shape} samples at {rate} Hz")
    return Outcome(request, "ok", seconds)


def caller_loop(url: str, plan: list[Request], deadline: float, sample_rate: int, downloads: Path,
                outcomes: list[Outcome], lock: threading.Lock) -> None:
    from gradio_client import Client

    client = Client(url, analytics_enabled=False, verbose=False, download_files=str(downloads))
    try:
        for request in plan:
            if time.monotonic() > deadline:
                break  # the unsent rest shows up as missing answers
            outcome = send(client, request, deadline, sample_rate)
            with lock:
                outcomes.append(outcome)
            if outcome.kind == "timeout":
                break
    finally:
        client.close()


def is_expected(outcome: Outcome) -> bool:
    """Audio of the right length for a tone; for the corrupt file, the app's one-line message naming the
    caller's own file (not the server's path); for either, a full queue."""
    if outcome.kind == "queue_full":
        return True
    if outcome.request.expected_samples is not None:
        return outcome.kind == "ok"
    message = outcome.detail
    return (outcome.kind == "app_error" and "\n" not in message and "/" not in message
            and message.startswith(f"{outcome.request.path.name}: cannot decode audio"))


@pytest.mark.slow
def test_many_users_at_once_are_all_answered_within_bounds(tmp_path, tiny):
    torch.manual_seed(0)
    vocoder = Vocoder(tiny.audio, Teacher(tiny.teacher, tiny.audio), Student(tiny.student, tiny.audio), device="cpu",
                   pitch=PitchPredictor(tiny.pitch))
    rate, hop = tiny.audio.sample_rate, tiny.audio.hop_length
    plans = plan_requests(tmp_path, rate, hop)
    samples = rate + 3  # 1 s: the request before the load (a warm-up) and after it (the health check)
    single = Request(-1, write_tone(tmp_path / "single.wav", samples, rate), "student", samples // hop * hop)
    demo = build_demo(vocoder, max_seconds=LONGEST + 0.5, examples=[])
    port = free_port()
    demo.launch(**{**launch_options("127.0.0.1", port), "prevent_thread_lock": True, "quiet": True})
    url = f"http://127.0.0.1:{port}/"
    try:
        from gradio_client import Client

        warm = Client(url, analytics_enabled=False, verbose=False, download_files=str(tmp_path / "dl-warm"))
        warm_up = send(warm, single, time.monotonic() + 30, rate)
        warm.close()
        assert warm_up.kind == "ok", warm_up
        memory_before = memory_mb()

        outcomes: list[Outcome] = []
        lock = threading.Lock()
        start = time.monotonic()
        deadline = start + DEADLINE_S
        threads = [threading.Thread(target=caller_loop, daemon=True, name=f"caller-{k}",
                                    args=(url, plan, deadline, rate, tmp_path / f"dl-{k}", outcomes, lock))
                   for k, plan in enumerate(plans)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(deadline + 10 - time.monotonic(), 0.1))
        load_seconds = time.monotonic() - start
        memory_after = memory_mb()
        assert not [t.name for t in threads if t.is_alive()], "callers still waiting after the deadline"

        health = Client(url, analytics_enabled=False, verbose=False,
                        download_files=str(tmp_path / "dl-after"))
        after = send(health, single, time.monotonic() + 30, rate)
        health.close()
    finally:
        demo.close()

    kinds = {kind: sum(o.kind == kind for o in outcomes)
             for kind in ("ok", "app_error", "queue_full", "timeout", "unexpected")}
    latencies = np.array([o.seconds for o in outcomes if o.kind == "ok"])
    report = {
        "callers": CALLERS, "requests": sum(map(len, plans)), "answered": len(outcomes), **kinds,
        "latency_median_s": round(float(np.median(latencies)), 3) if latencies.size else None,
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies.size else None,
        "latency_max_s": round(float(latencies.max()), 3) if latencies.size else None,
        "latency_median_by_model_s": {m: round(float(np.median([o.seconds for o in outcomes if o.kind == "ok"
                                                                 and o.request.model == m])), 3)
                                      for m in MODELS_CYCLE if any(o.request.model == m for o in outcomes)},
        "error_latency_median_s": round(float(np.median([o.seconds for o in outcomes
                                                         if o.kind == "app_error"])), 3) if kinds["app_error"]
        else None,
        "alone_latency_s": round(warm_up.seconds, 3), "after_latency_s": round(after.seconds, 3),
        "load_wall_s": round(load_seconds, 2),
        "rss_mb_before": round(memory_before["VmRSS"], 1), "rss_mb_after": round(memory_after["VmRSS"], 1),
        "peak_rss_mb_before": round(memory_before["VmHWM"], 1),
        "peak_rss_mb_after": round(memory_after["VmHWM"], 1),
        "peak_rss_growth_mb": round(memory_after["VmHWM"] - memory_before["VmHWM"], 1),
        "torch_threads": torch.get_num_threads(),
    }
    print("\nload test:", json.dumps(report))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(report, indent=2) + "\n")

    assert len(outcomes) == report["requests"], "some requests were never answered"
    wrong = [o for o in outcomes if not is_expected(o)]
    assert not wrong, wrong
    assert kinds["ok"] > 0
    assert report["peak_rss_growth_mb"] < MEMORY_BOUND_MB, report
    assert after.kind == "ok", after
