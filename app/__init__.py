"""The wavegen web demo: a Gradio page and API endpoint over `wavegen.Vocoder`.

    python -m app --checkpoint default --port 7860

    from app import build_demo, vocode
    demo = build_demo(vocoder)                      # gr.Blocks; endpoint api_name="vocode"
    result = vocode("speech.wav", "student", vocoder=vocoder)   # plain call, no server

The app only calls the library: no model code lives here.
"""

import os

# Before gradio is imported anywhere: no usage statistics leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.handlers import Limits, VocodeResult, compare, vocode  # noqa: E402
from app.ui import build_demo, launch, launch_options, load_vocoder  # noqa: E402

__all__ = ["Limits", "VocodeResult", "build_demo", "compare", "launch", "launch_options", "load_vocoder", "vocode"]
