"""The web app's page (Gradio): the layout and its wiring to the handlers of
:class:`inbetweening.app.InbetweenApp`, which do all the work."""

from __future__ import annotations

from .memory import MEMORY_PRESETS
from .methods import METHOD_RECORDS, RECIPES


def _keyframes_panel(gr, app) -> dict:
    keyframes = gr.File(label="Keyframes: two or more images, in order (drag to reorder)",
                        file_count="multiple", type="filepath", allow_reordering=True,
                        elem_id="keyframes")
    order = gr.Gallery(label="Order", columns=6, fit_columns=False, height=150,
                       allow_preview=False, object_fit="contain", interactive=False,
                       elem_id="order")
    notice = gr.Markdown("", elem_id="notice")
    status = gr.Markdown(app.count_message([]), elem_id="status")
    return dict(keyframes=keyframes, order=order, notice=notice, status=status)


def _settings_panel(gr, app, d: dict) -> dict:
    """The settings' widgets, by the name :meth:`InbetweenApp.generate` takes them under."""
    w = {}
    with gr.Row():
        w["method"] = gr.Dropdown([(f"{m.name}: {m.label}", m.name)
                                   for m in METHOD_RECORDS.values()],
                                  value=d["method"], label="Method", elem_id="method")
        w["size"] = gr.Textbox(d["size"], label="Size (WxH, multiples of 8)", elem_id="size")
    with gr.Row():
        w["frames"] = gr.Slider(3, app.max_frames(), value=d["frames"], step=1,
                                label="Frames per segment (keyframes included)",
                                elem_id="frames")
        w["recipe"] = gr.Dropdown([("model's own", "")] + [(r, r) for r in RECIPES], value="",
                                  label="Recipe", elem_id="recipe")
        w["steps"] = gr.Number(d["steps"], precision=0, minimum=1, maximum=1000,
                               label="Denoising steps", elem_id="steps")
    with gr.Row():
        w["seed"] = gr.Number(0, precision=0, minimum=-1, label="Seed (-1: random)",
                              elem_id="seed")
        w["fps"] = gr.Slider(1, 30, value=d["fps"], step=1, label="Frames per second",
                             elem_id="fps")
    with gr.Row():
        w["loop"] = gr.Checkbox(False, label="Loop (back to the first keyframe)", elem_id="loop")
        w["side_by_side"] = gr.Checkbox(False, label="Show the keyframes beside the video",
                                        elem_id="side-by-side")
    w["memory"] = gr.Dropdown([(f"{name}: {p.summary}", name) for name, p in MEMORY_PRESETS.items()],
                              value=app.pipe.memory, label="Memory", elem_id="memory")
    with gr.Accordion("SVD's conditioning", open=False):
        with gr.Row():
            w["motion_bucket"] = gr.Slider(0, 255, value=d["motion_bucket"], step=1,
                                           label="Motion bucket (more: more motion)",
                                           elem_id="motion-bucket")
            w["noise_aug"] = gr.Slider(0.0, 1.0, value=d["noise_aug"], step=0.01,
                                       label="Noise augmentation of the keyframes",
                                       elem_id="noise-aug")
    w["recipe"].change(lambda r: RECIPES[r]["num_inference_steps"] if r else d["steps"],
                       w["recipe"], w["steps"])
    shown = ("steps", "fps", "motion_bucket", "noise_aug")  # each method's own settings

    def picked(method):
        own = app.defaults(method)
        return [own[name] for name in shown]

    w["method"].change(picked, w["method"], [w[name] for name in shown])
    return w


def _result_panel(gr) -> dict:
    video = gr.Video(label="Result", autoplay=True, loop=True, height=360, interactive=False,
                     elem_id="result")
    downloads = gr.File(label="Download (mp4, gif, PNG frames as zip)", file_count="multiple",
                        interactive=False, elem_id="downloads")
    message = gr.Markdown("", elem_id="message")
    return dict(video=video, downloads=downloads, message=message)


def build_page(app):
    """The Gradio page (a ``gr.Blocks``) of ``app``."""
    import gradio as gr

    d = app.defaults()
    with gr.Blocks(title="Inbetweening", delete_cache=(600, 3600),
                   analytics_enabled=False) as page:
        gr.Markdown("# Inbetweening\nThe video between your keyframes, by dual-directional "
                    f"sampling with Stable Video Diffusion. Model: {app.model_description}.")
        with gr.Row():
            with gr.Column(scale=1):
                k = _keyframes_panel(gr, app)
                settings = _settings_panel(gr, app, d)
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                out = _result_panel(gr)
        k["keyframes"].upload(app.on_upload, k["keyframes"], [k["keyframes"], k["notice"]])
        k["keyframes"].change(app.preview, k["keyframes"], k["order"])
        k["keyframes"].change(app.count_message, k["keyframes"], k["status"])
        names = list(settings)

        def generate(files, *values, progress=gr.Progress()):
            return app.generate(files, **dict(zip(names, values)), progress=progress)

        run.click(generate, [k["keyframes"], *settings.values()],
                  [out["video"], out["downloads"], out["message"]], concurrency_limit=1)
    return page
