"""The Gradio page: inputs on the left, the result on the right, both mels underneath.

Two endpoints:
- api_name="vocode": (audio_file, model, temperature=1.0, mel_file=None, pitch_shift=1.0) ->
  (output audio, input mel image, output mel image, summary markdown); callers that predate
  pitch_shift keep working;
- api_name="compare": (audio_file, temperature=1.0, mel_file=None, pitch_shift=1.0) ->
  (student audio, teacher audio, Griffin-Lim audio, markdown table of wall times and mel distances).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from wavegen import Vocoder, load_preset
from wavegen.audio import first_line
from wavegen.checkpoint import CheckpointError
from wavegen.vocoder import MODELS, PITCH_SHIFT_RANGE

from app.handlers import MODEL_LABELS, TEMPERATURE_RANGE, Limits, compare, vocode

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
FALLBACK_PRESET = "speech16k"
MAX_FILE_SIZE = "20mb"
QUEUE_SIZE = 16
CONCURRENCY = 2
IMAGE_BUTTONS = ["download", "fullscreen"]  # no "share": it would send files to Hugging Face
CACHE_AGE = 3600  # seconds an upload or a result stays on the server


def about(vocoder: Vocoder) -> str:
    """What each model of this checkpoint is, from the checkpoint itself (its models and the student's training
    settings), so the page stays true when the shipped models change."""
    lines = []
    student, teacher = vocoder.student, vocoder.teacher
    if student is not None:
        flows = f", then {len(student.flows)} WaveNet flows" if len(student.flows) else " alone"
        pitch = f" on F0 read from the mel (a harmonic-plus-noise flow{flows})" if student.source is not None else ""
        how = {True: ", distilled from the teacher (probability density distillation, with spectral losses)",
               False: ", trained on spectral losses against the recordings (not distilled from the teacher)",
               None: ""}[vocoder.distilled]
        lines.append(f"**student**: a Gaussian inverse-autoregressive flow{pitch}{how}; it draws every sample "
                     "at once, in parallel.")
    if teacher is not None:
        reads = " and the waveform one pitch period back" if teacher.cfg.pitch_lag else ""
        role = " the student learned from" if vocoder.distilled else ""
        lines.append(f"**teacher**: the autoregressive WaveNet{role}, conditioned on the mel{reads}; one sample "
                     "after another, so slow on a CPU.")
    lines.append("**Griffin-Lim**: no network, phase recovered iteratively from the mel; a baseline.")
    return (" ".join(lines) + "\n\n"
            f"Uploads and results are deleted from the server after about {CACHE_AGE // 60} minutes.")


CSS = """
#notice { border-left: 4px solid var(--color-accent); padding-left: 12px; }
#summary { min-height: 3em; }
"""


def load_vocoder(checkpoint: str | Path = "default", device: str = "auto") -> tuple[Vocoder, str | None]:
    """The vocoder to serve and a notice for the page: Griffin-Lim only when "default" is not shipped yet."""
    try:
        return Vocoder.load(checkpoint, device=device), None
    except CheckpointError as exc:
        if str(checkpoint) != "default":
            raise
        notice = (f"No trained checkpoint could be loaded ({first_line(exc)}), so only **Griffin-Lim** "
                  f"runs here, with the `{FALLBACK_PRESET}` mel settings.")
        return Vocoder.from_preset(load_preset(FALLBACK_PRESET), device=device), notice


def build_demo(vocoder: Vocoder, *, max_seconds: float = 30.0, teacher_max_seconds: float = 10.0,
               examples: list[str | Path] | None = None, notice: str | None = None) -> gr.Blocks:
    """The page and its queued `vocode` endpoint. `examples`: audio files (default: app/examples/*.wav)."""
    limits = Limits(max_seconds, teacher_max_seconds)
    examples = sorted(EXAMPLES_DIR.glob("*.wav")) if examples is None else [Path(e) for e in examples]
    if notice is None and vocoder.available_models == ["griffin-lim"]:
        notice = "This checkpoint holds no trained model: only **Griffin-Lim** runs here."
    with gr.Blocks(title="wavegen vocoder", analytics_enabled=False,
                   delete_cache=(CACHE_AGE, CACHE_AGE)) as demo:
        gr.Markdown(introduction(vocoder, limits), elem_id="intro")
        if notice:
            gr.Markdown(f"⚠️ {notice}", elem_id="notice")
        with gr.Row(equal_height=False):
            with gr.Column():
                audio_in, mel_in = input_panel(examples, about(vocoder))
            with gr.Column():
                model, temperature, pitch_shift, button = model_panel(vocoder, limits)
                audio_out = gr.Audio(label="Output audio", type="numpy", interactive=False,
                                     buttons=["download"], elem_id="audio-out")
                summary = gr.Markdown("*Choose an input and a model, then press **Vocode**.*",
                                      elem_id="summary")
        with gr.Row():
            contour = " and its F0 contour (cyan)" if vocoder.pitch_model is not None else ""
            mel_in_img = gr.Image(label=f"Input mel{contour} (time →, frequency ↑)", type="numpy", format="png",
                                  interactive=False, buttons=IMAGE_BUTTONS, elem_id="mel-in-img")
            mel_out_img = gr.Image(label=f"Output's mel{contour}, same scale and axes", type="numpy",
                                   format="png", interactive=False, buttons=IMAGE_BUTTONS, elem_id="mel-out-img")
        compare_button, compared, table = compare_panel()
        timings = gr.State({})
        button.click(endpoint(vocoder, limits), [audio_in, model, temperature, mel_in, pitch_shift, timings],
                     [audio_out, mel_in_img, mel_out_img, summary, timings], api_name="vocode",
                     show_progress_on=audio_out)
        compare_button.click(compare_endpoint(vocoder, limits), [audio_in, temperature, mel_in, pitch_shift],
                             [*compared, table], api_name="compare", show_progress_on=table)
        model.change(lambda m: (gr.Slider(interactive=m != "griffin-lim"),
                                gr.Slider(interactive=vocoder.pitch_driven(m))),
                     model, [temperature, pitch_shift], api_visibility="private", queue=False)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def introduction(vocoder: Vocoder, limits: Limits) -> str:
    audio = vocoder.audio
    return (
        "# wavegen: a neural vocoder\n"
        "Turns a mel spectrogram back into speech. Upload or record audio (wav, flac, ogg, mp3): its mel is "
        "taken and vocoded. Or upload a log-mel `.npy` of shape (n_mels, frames) in wavegen's convention "
        f"({audio.n_mels} bands, natural log, {audio.sample_rate} Hz, hop {audio.hop_length}).\n\n"
        f"Inputs up to **{limits.max_seconds:g} s**; the teacher samples one value at a time, so it takes "
        f"at most **{limits.teacher_max_seconds:g} s**."
    )


def input_panel(examples: list[Path], about_text: str) -> tuple[gr.Audio, gr.File]:
    audio_in = gr.Audio(label="Speech (upload or record)", type="filepath", sources=["upload", "microphone"],
                        buttons=["download"], elem_id="audio-in")
    with gr.Accordion("…or a log-mel spectrogram (.npy)", open=False, elem_id="mel-accordion"):
        mel_in = gr.File(label="Log-mel .npy, shape (n_mels, frames)", file_types=[".npy"], type="filepath",
                         elem_id="mel-in")
    if examples:
        gr.Examples([[str(p)] for p in examples], inputs=[audio_in], cache_examples=False,
                    label="Held-out examples (Asterisk prompts, CC-BY-SA-3.0)", elem_id="examples",
                    example_labels=[p.stem for p in examples])
    gr.Markdown(about_text, elem_id="about")
    return audio_in, mel_in


def model_panel(vocoder: Vocoder, limits: Limits) -> tuple[gr.Radio, gr.Slider, gr.Slider, gr.Button]:
    available = vocoder.available_models
    choices = [(MODEL_LABELS[m] + ("" if m in available else ": not in this checkpoint"), m) for m in MODELS]
    model = gr.Radio(choices, value=available[0], label="Model", elem_id="model",
                     info=f"The teacher takes at most {limits.teacher_max_seconds:g} s of input; "
                          f"the others {limits.max_seconds:g} s.")
    temperature = gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature",
                            info="Scales the noise the student (and the teacher) sample; 0 gives the mean.",
                            interactive=available[0] != "griffin-lim", elem_id="temperature")
    pitch_shift = gr.Slider(*PITCH_SHIFT_RANGE, value=1.0, step=0.05, label="Pitch shift",
                            info="Multiplies the F0 a pitch-driven model sings at (1 keeps the speaker's pitch).",
                            interactive=vocoder.pitch_driven(available[0]), elem_id="pitch-shift")
    button = gr.Button("Vocode", variant="primary", elem_id="vocode-btn")
    return model, temperature, pitch_shift, button


def compare_panel() -> tuple[gr.Button, list[gr.Audio], gr.Markdown]:
    """One click: every model on the same input, side by side."""
    with gr.Accordion("Compare the models on this input", open=True, elem_id="compare"):
        button = gr.Button("Compare student, teacher and Griffin-Lim", elem_id="compare-btn")
        with gr.Row():
            audios = [gr.Audio(label=MODEL_LABELS[m], type="numpy", interactive=False, buttons=["download"],
                               elem_id=f"compare-{m}") for m in MODELS]
        table = gr.Markdown(elem_id="compare-table")
    return button, audios, table


def endpoint(vocoder: Vocoder, limits: Limits):
    """The event handler: `vocode` with the session's timings and a progress bar fed by the teacher."""

    def run(audio_file: str | None = None, model: str = "student", temperature: float = 1.0,
            mel_file: str | None = None, pitch_shift: float = 1.0, timings: dict | None = None,
            progress=gr.Progress()):
        """Vocode an audio file (or a log-mel .npy) with "student", "teacher" or "griffin-lim", the student's
        F0 times pitch_shift (0.5-2); returns the output audio first, then images of the input and output
        mels with their F0 contours and a summary."""
        timings = {} if timings is None else timings

        def report(done: int, total: int) -> None:
            progress((done, total), desc=f"{model}: sampling", unit="samples")

        return (*vocode(audio_file, model, temperature, mel_file, pitch_shift, vocoder=vocoder, limits=limits,
                        timings=timings, progress=report), timings)

    return run


def compare_endpoint(vocoder: Vocoder, limits: Limits):
    """The compare button's handler: every model on one input."""

    def run(audio_file: str | None = None, temperature: float = 1.0, mel_file: str | None = None,
            pitch_shift: float = 1.0, progress=gr.Progress()):
        """Student, teacher (within its length cap) and Griffin-Lim on the same input: their three audios and
        a table of wall times and mel distances to the input."""

        def report(done: int, total: int) -> None:
            progress((done, total), desc="teacher: sampling", unit="samples")

        return compare(audio_file, temperature, mel_file, pitch_shift, vocoder=vocoder, limits=limits,
                       progress=report)

    return run


def launch_options(host: str = "127.0.0.1", port: int = 7860) -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch`: local only, no share link, no SSR, bounded uploads."""
    return dict(server_name=host, server_port=port, share=False, ssr_mode=False, max_file_size=MAX_FILE_SIZE,
                allowed_paths=[str(EXAMPLES_DIR)], css=CSS, footer_links=["api"])


def launch(checkpoint: str | Path = "default", host: str = "127.0.0.1", port: int = 7860,
           **kw: Any) -> gr.Blocks:
    """Load the checkpoint (or fall back to Griffin-Lim), build the page and serve it.

    `kw` go to `Blocks.launch` (e.g. prevent_thread_lock=True to return at once; then `.close()` it).
    """
    vocoder, notice = load_vocoder(checkpoint)
    demo = build_demo(vocoder, notice=notice)
    demo.launch(**{**launch_options(host, port), **kw})
    return demo
