"""The demo page (Gradio): inputs on the left, the streamed answer, clip, frames, timeline and verification on
the right. The work itself is in `runner.py`; this file is layout and wiring."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..engine import Engine
from ..errors import ForesightError, MissingExtraError
from . import runner
from .scenes import SCENES, write_scenes

INSTALL_HINT = "pip install 'foresight-engine[ui]'"
CSS = ".fe-status progress { width: 60%; height: 1em; vertical-align: middle; } .fe-status { min-height: 1.6em; }"


def require_gradio() -> None:
    """Raise `MissingExtraError` naming the extra when gradio (or matplotlib, for the plots) is missing."""
    try:
        import gradio  # noqa: F401
        import matplotlib  # noqa: F401
    except ModuleNotFoundError as exc:
        raise MissingExtraError(f"the demo UI needs {exc.name!r}, which is not installed: {INSTALL_HINT}") from exc


def create_demo(engine: Engine, workdir: str | Path | None = None):
    """A `gradio.Blocks` demo over `engine`; run it with `launch(demo, ...)` (or `demo.launch(css=CSS)`).
    `workdir` holds the example scenes and the predicted mp4s (default: a new temporary directory)."""
    require_gradio()
    import gradio as gr

    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="foresight-ui-"))
    work = runner.DemoRunner(engine, workdir / "videos")
    scenes = write_scenes(workdir / "scenes")
    config = engine.config
    gen, step, r = config.generation, config.spatial_step, config.temporal_step
    lim = gen.limits  # the sliders offer only what the engine accepts

    with gr.Blocks(title="foresight-engine", analytics_enabled=False) as demo:
        gr.Markdown(f"## foresight-engine · one reasoning step\nModel **{config.name}**. Images and a question in; "
                    f"the answer streams while the video of what happens next is denoised. Frames come out at the "
                    f"size set below (default {gen.height}x{gen.width}): the last image, the video's first frame, "
                    "is resized to it (stretched if its aspect ratio differs).")
        frames_state = gr.State(None)  # uint8 [F, H, W, 3] of the last prediction
        with gr.Row():
            with gr.Column(scale=2):
                images = gr.Gallery(label="images (the last one is the video's first frame)", type="filepath",
                                    interactive=True, columns=3, height=220, object_fit="contain",
                                    allow_preview=False, elem_id="fe-images")
                prompt = gr.Textbox(label="prompt", value=SCENES[0].prompt, lines=2, elem_id="fe-prompt")
                gr.Examples([[[str(path)], text] for path, text in scenes], inputs=[images, prompt],
                            label="example scenes", example_labels=[scene.name for scene in SCENES])
                with gr.Accordion("generation settings", open=False):
                    num_frames = gr.Slider(1, min(max(4 * gen.num_frames, 8 * r + 1), lim.max_frames), value=gen.num_frames, step=r,
                                           label="frames (num_frames)", info=f"{r}*k+1")
                    height = gr.Slider(step, min(max(2 * gen.height, 8 * step), lim.max_side), value=gen.height, step=step,
                                       label="height", info=f"multiple of {step}")
                    width = gr.Slider(step, min(max(2 * gen.width, 8 * step), lim.max_side), value=gen.width, step=step,
                                      label="width", info=f"multiple of {step}")
                    steps = gr.Slider(1, min(max(50, gen.num_inference_steps), lim.max_inference_steps), value=gen.num_inference_steps, step=1,
                                      label="denoising steps (num_inference_steps)")
                    guidance = gr.Slider(1, 10, value=gen.guidance_scale, step=0.5,
                                         label="guidance (guidance_scale)", info="1 disables classifier-free guidance")
                    max_new_tokens = gr.Slider(0, min(max(256, gen.max_new_tokens), lim.max_new_tokens), value=gen.max_new_tokens, step=1,
                                               label="answer tokens (max_new_tokens)")
                    seed = gr.Number(0, precision=0, minimum=0, label="seed")
                with gr.Row():
                    run = gr.Button("Predict", variant="primary", elem_id="fe-predict")
                    stop = gr.Button("Stop")
            with gr.Column(scale=3):
                answer = gr.Textbox(label="answer (streamed token by token)", lines=3, elem_id="fe-answer")
                status = gr.HTML(runner.status_html("ready"), elem_id="fe-status")
                with gr.Row():
                    video = gr.Video(label="predicted clip", height=260, autoplay=True, loop=True,
                                     interactive=False, elem_id="fe-video")
                    with gr.Column():
                        frame = gr.Image(label="frame", height=220, interactive=False, elem_id="fe-frame")
                        scrub = gr.Slider(0, max(gen.num_frames - 1, 1), value=0, step=1, label="scrub frames",
                                          elem_id="fe-scrub")
                with gr.Accordion("stage timeline", open=True):
                    plot = gr.Plot(label="timeline", format="png", elem_id="fe-timeline")
                    timings = gr.Markdown()
                with gr.Accordion("what really happened: verify the prediction", open=False):
                    actual = gr.Video(label="actual video", sources=["upload"], height=220, elem_id="fe-actual")
                    check = gr.Button("Verify", elem_id="fe-verify")
                    scores = gr.Markdown(elem_id="fe-scores")
                    curves = gr.Plot(label="per-frame curves", format="png")

        def predict(gallery, text, frames_, height_, width_, steps_, guidance_, tokens_, seed_):
            paths = [item[0] if isinstance(item, (tuple, list)) else item for item in gallery or []]
            settings = dict(num_frames=int(frames_), height=int(height_), width=int(width_),
                            num_inference_steps=int(steps_), guidance_scale=float(guidance_),
                            max_new_tokens=int(tokens_), seed=int(seed_ or 0))
            try:
                for view in work.run(paths, text, **settings):
                    if view.prediction is None:
                        yield {answer: view.answer, status: view.status}
                        continue
                    pred = view.prediction
                    last = len(pred.frames) - 1
                    yield {answer: view.answer, status: view.status, video: str(view.video),
                           frames_state: pred.frames, frame: runner.frame_view(pred.frames, 0),
                           scrub: gr.Slider(maximum=max(last, 1), value=0, interactive=last > 0),
                           plot: runner.timeline(pred), timings: runner.timings_table(pred)}
            except ForesightError as exc:  # bad input: the engine's message, naming the setting
                raise gr.Error(str(exc)) from None

        outputs = [answer, status, video, frames_state, frame, scrub, plot, timings]
        event = run.click(predict, [images, prompt, num_frames, height, width, steps, guidance, max_new_tokens,
                                    seed], outputs, show_progress="hidden")
        stop.click(None, cancels=[event])  # closing the stream cancels the request in the engine
        scrub.change(runner.frame_view, [frames_state, scrub], frame, show_progress="hidden")

        def check_actual(frames_: Any, path: str | None):
            if frames_ is None or not path:
                raise gr.Error("run a prediction and upload the actual video first")
            try:
                return runner.verification(frames_, path)
            except ForesightError as exc:
                raise gr.Error(str(exc)) from None

        check.click(check_actual, [frames_state, actual], [scores, curves])
    return demo


def launch(demo, host: str = "127.0.0.1", port: int = 7860, **kwargs) -> None:
    """`demo.launch` with this app's style; no public share link, no analytics, system fonts (nothing fetched)."""
    import gradio as gr
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    demo.queue().launch(server_name=host, server_port=port, share=False, show_error=True, css=CSS, theme=theme,
                        **kwargs)
