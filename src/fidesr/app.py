"""``fidesr-app``: an interactive Gradio page to explore FiDeSR, LFIM strengths above all.

The model is loaded once (by ``fidesr-app``, see :mod:`fidesr.cli.app`); each request runs the same
:class:`~fidesr.pipeline.FiDeSRPipeline` as ``fidesr-upscale`` (so large inputs go through its latent and VAE
tiling) with the LFIM low/high-frequency strengths and the colour fix chosen in the page, and shows a
before/after slider against the bicubic upsampling, the time taken and a download of the full-resolution PNG.

Two layers, so that the logic is testable without a browser:

- :func:`read_upload` (file -> image tensor, or :class:`AppInputError` with a message for the page) and
  :func:`upscale_request` (image + strengths + colour fix -> :class:`AppResult`) are plain functions;
- :func:`build_app` wires them into a ``gr.Blocks``; :func:`launch_app` serves it offline (no analytics, no
  share link, system fonts).

Limits (:class:`InputLimits`, options of ``fidesr-app``), so that one user cannot hold the server: an upload's
size in bytes (refused by Gradio's server before it is stored, and again by :func:`read_upload`) and in pixels
(read from the header), a per-request time limit (a request that runs longer is stopped between two layers
of the model and answered with an error, freeing the queue), and the number of requests waiting in the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from fidesr.cli.options import pisasr_strengths
from fidesr.data.imageio import ImageLoadError, load_image, open_image, save_image, to_uint8
from fidesr.data.photos import skimage_data_dir
from fidesr.errors import DiskFullError, FidesrError, NonFiniteOutputError
from fidesr.pipeline import COLOR_FIXES, FiDeSRPipeline

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger("fidesr.app")

#: Photographs inside scikit-image's wheel (no download), as (file, crop box y, x, size) -> LQ examples.
EXAMPLE_PHOTOS = (
    ("motorcycle_right.png", 10, 130, 480),
    ("astronaut.png", 0, 0, 512),
    ("coffee.png", 0, 100, 400),
)
#: Slider range of the LFIM strengths (the released settings are 0.2 / 0.2; 0 switches a branch off).
STRENGTH_MAX = 1.0


class AppInputError(FidesrError, ValueError):
    """An upload the app cannot process; the message is shown in the page as it is."""


class RequestTimeoutError(FidesrError, RuntimeError):
    """A request ran past the app's time limit and was stopped; the message is shown in the page."""


@dataclass(frozen=True)
class InputLimits:
    """What the page accepts. ``min_side``: px on each side (smaller is no SR problem); ``max_pixels``:
    width x height of the input (the output has ``scale**2`` times more; the CPU/GPU time grows with it);
    ``max_bytes``: the uploaded file's size; ``seconds``: the longest a request may run (None: no limit)."""

    min_side: int = 16
    max_pixels: int = 1024 * 1024
    max_bytes: int = 20_000_000
    seconds: float | None = 180.0


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n:,} bytes"


@contextlib.contextmanager
def time_limit(pipe: FiDeSRPipeline, seconds: float | None):
    """Within the block, a call of ``pipe`` that runs past ``seconds`` is stopped with
    :class:`RequestTimeoutError`: every module of the model checks the deadline as it is called (a forward
    pre-hook; the checks cost microseconds per layer). The model's temporary settings are restored by their
    own ``finally`` blocks, so the next request runs as usual. ``None`` or 0: no limit."""
    if not seconds:
        yield
        return
    deadline = time.monotonic() + seconds

    def check(module: torch.nn.Module, args: Any) -> None:
        if time.monotonic() > deadline:
            raise RequestTimeoutError(f"stopped after {seconds:g} s, the app's time limit per request")

    parts = [m for m in (pipe.backbone, pipe.lrrb, pipe.lfim) if isinstance(m, torch.nn.Module)]
    handles = [m.register_forward_pre_hook(check) for part in parts for m in part.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class AppResult:
    """One request's result.

    sr, bicubic: uint8 [H, W, 3] at ``scale`` x the input size (``bicubic`` is the pipeline's own
    bicubic upsampling, the baseline FiDeSR starts from). seconds: wall time of the model call, from the
    input tensor to the SR tensor on the CPU. png: the full-resolution SR image written to disk.
    """

    sr: np.ndarray
    bicubic: np.ndarray
    seconds: float
    png: Path


def read_upload(path: str | os.PathLike, limits: InputLimits = InputLimits()) -> torch.Tensor:
    """An uploaded file -> [3, H, W] float32 in [0, 1], through :func:`fidesr.data.imageio.load_image`.

    The size is checked on the header before anything is decoded (``open_image``), so a decompression bomb
    costs nothing.

    Raises:
        AppInputError: not an image, corrupt, truncated, too large or too small. The message names the file
            by its base name: an upload's path is a server temporary file that means nothing to the user.
    """
    name = Path(path).name
    size = os.stat(path).st_size
    if size > limits.max_bytes:
        raise AppInputError(f"{name} is {_bytes(size)}, over the upload limit of {_bytes(limits.max_bytes)}.")
    try:
        with open_image(path, max_pixels=limits.max_pixels) as img:
            width, height = img.size
        if min(width, height) < limits.min_side:
            raise AppInputError(
                f"{name} is {width} x {height} px, too small: the app needs at least {limits.min_side} px on "
                "each side."
            )
        return load_image(path, max_pixels=limits.max_pixels)
    except ImageLoadError as err:
        raise AppInputError(str(err).replace(str(path), name)) from None


def upscale_request(
    pipe: FiDeSRPipeline,
    image: torch.Tensor | np.ndarray,
    lf_scale: float | None,
    hf_scale: float | None,
    color_fix: str,
    out_dir: str | os.PathLike,
    name: str = "image",
    seed: int = 0,
    lambda_pix: float | None = None,
    lambda_sem: float | None = None,
    seconds: float | None = None,
) -> AppResult:
    """Run one request of the page: super-resolve ``image`` and write the full-resolution PNG.

    Args:
        pipe: a loaded inference pipeline (any device; the result comes back to the CPU).
        image: [3, h, w] float in [0, 1], or [h, w, 3] uint8 (as a Gradio numpy image).
        lf_scale, hf_scale: LFIM strengths (>= 0; ignored as ``None``, i.e. the model's, when the pipeline
            has no LFIM and they are 0).
        color_fix: one of ``fidesr.pipeline.COLOR_FIXES``.
        out_dir: folder of the PNG, named after ``name`` and the settings (the same settings overwrite it).
        seed: seed of the VAE posterior sample, fixed so that only the settings change the result.
        lambda_pix, lambda_sem: PiSA-SR's strengths of the pixel and semantic LoRA sets (models with two
            sets only; None: 1, the merged model).
        seconds: time limit of the model call (:func:`time_limit`; None: none).

    Raises:
        AppInputError: invalid strengths or colour fix.
        RequestTimeoutError: the model call ran past ``seconds``.
    """
    if color_fix not in COLOR_FIXES:
        raise AppInputError(f"colour fix must be one of {', '.join(COLOR_FIXES)}, got {color_fix!r}")
    for label, value in (("low-frequency", lf_scale), ("high-frequency", hf_scale)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise AppInputError(f"the LFIM {label} strength must be a number >= 0, got {value}")
    if pipe.lfim is None:
        if lf_scale or hf_scale:
            raise AppInputError("this model has no LFIM (lfim: null): its strengths cannot be set")
        lf_scale = hf_scale = None
    lq = image
    if isinstance(image, np.ndarray):
        lq = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    start = time.perf_counter()
    two_sets = bool(pipe.backbone.lora_sets)
    strengths = pisasr_strengths(lambda_pix, lambda_sem) if two_sets else None
    with time_limit(pipe, seconds):
        out = pipe(
            lq[None],
            lf_scale=lf_scale,
            hf_scale=hf_scale,
            color_fix=color_fix,
            generator=generator,
            strengths=strengths,
        )
    sr, bicubic = out.sr[0].cpu(), out.lq_up[0].cpu()  # .cpu() waits for the device: the time is complete
    seconds = time.perf_counter() - start
    tag = "nolfim"
    if pipe.lfim is not None:
        tag = f"lf{_strength(pipe, 'lf_scale', lf_scale):.2f}_hf{_strength(pipe, 'hf_scale', hf_scale):.2f}"
    if two_sets:
        tag += f"_pix{1.0 if lambda_pix is None else lambda_pix:.2f}_sem{1.0 if lambda_sem is None else lambda_sem:.2f}"
    png = save_image(sr, Path(out_dir) / f"{name}_x{pipe.scale}_{tag}_{color_fix}.png")
    return AppResult(sr=to_uint8(sr), bicubic=to_uint8(bicubic), seconds=seconds, png=png)


def _strength(pipe: FiDeSRPipeline, attr: str, value: float | None) -> float:
    """The strength a call uses: the given one, else the LFIM module's default."""
    return float(getattr(pipe.lfim, attr) if value is None else value)


def write_examples(folder: str | os.PathLike, scale: int = 4) -> list[Path]:
    """Low-quality examples from the photographs scikit-image ships (no download): a crop of each
    ``EXAMPLE_PHOTOS`` entry, bicubic-downscaled by ``scale`` (antialiased). Returns the PNG paths."""
    paths = []
    for file, y, x, size in EXAMPLE_PHOTOS:
        src = skimage_data_dir() / file
        if not src.is_file():  # a scikit-image release without it: fewer examples, not a failure
            continue
        crop = load_image(src)[:, y : y + size, x : x + size]
        lq = F.interpolate(crop[None], scale_factor=1 / scale, mode="bicubic", antialias=True)[0].clamp(0, 1)
        paths.append(save_image(lq, Path(folder) / f"{Path(file).stem}_lq.png"))
    return paths


def _describe(pipe: FiDeSRPipeline) -> str:
    device = f"{pipe.device.type} ({str(pipe.dtype).removeprefix('torch.')})"
    tiles = f"latent tiles of {pipe.tile_size * 8} px" if pipe.tile_size else "no latent tiling"
    return f"x{pipe.scale}, {device}, {tiles}"


def build_app(
    pipe: FiDeSRPipeline,
    work_dir: str | os.PathLike,
    *,
    limits: InputLimits = InputLimits(),
    examples: Sequence[str | os.PathLike] = (),
    seed: int = 0,
    title: str = "FiDeSR",
) -> gr.Blocks:
    """The page around a loaded pipeline: upload, LFIM sliders, colour fix, bicubic/SR slider, time, PNG.

    Run settles the first result; moving a slider (on release) or changing the colour fix re-runs it.
    ``work_dir`` receives the PNGs (pass it to :func:`launch_app`, which allows Gradio to serve it).
    Element ids (``fidesr-*``) are stable for the browser test.
    """
    import gradio as gr

    out_dir = Path(work_dir)
    has_lfim = pipe.lfim is not None
    lf0 = float(pipe.lfim.lf_scale) if has_lfim else 0.0
    hf0 = float(pipe.lfim.hf_scale) if has_lfim else 0.0
    no_lfim = "" if has_lfim else " (this model has no LFIM)"
    two_sets = bool(pipe.backbone.lora_sets)  # PiSA-SR: the pixel and semantic sets get their own strengths

    def run(
        path: str | None, lf: float, hf: float, lp: float, ls: float, color_fix: str, required: bool
    ) -> tuple[Any, ...]:
        if not path:
            if required:
                raise gr.Error("Upload an image first (or pick an example).", print_exception=False)
            return gr.skip(), gr.skip(), gr.skip()
        try:
            image = read_upload(path, limits)
            res = upscale_request(
                pipe,
                image,
                lf if has_lfim else None,
                hf if has_lfim else None,
                color_fix,
                out_dir,
                name=Path(path).stem,
                seed=seed,
                lambda_pix=lp if two_sets else None,
                lambda_sem=ls if two_sets else None,
                seconds=limits.seconds,
            )
        except AppInputError as err:
            log.warning("fidesr-app: rejected upload: %s", err)
            raise gr.Error(str(err), title="Cannot use this image", print_exception=False) from None
        except NonFiniteOutputError as err:  # nothing was saved; not a matter of image size
            log.error("fidesr-app: %s: %s", Path(path).name, err)
            raise gr.Error(
                f"{Path(path).name}: {err}", title="Processing failed", print_exception=False
            ) from None
        except DiskFullError as err:  # the PNG could not be written: say which, the server goes on
            log.error("fidesr-app: %s", err)
            raise gr.Error(str(err), title="Disk full", print_exception=False) from None
        except RequestTimeoutError as err:  # the queue moves on to the next request
            log.warning("fidesr-app: %s (%s)", err, Path(path).name)
            raise gr.Error(
                f"The model was {err}. A smaller image is faster.", title="Too slow", print_exception=False
            ) from None
        except (RuntimeError, ValueError, MemoryError) as err:  # e.g. out of memory: the server goes on
            log.error("fidesr-app: the model failed: %s: %s", type(err).__name__, err)
            raise gr.Error(
                f"The model failed on this image ({type(err).__name__}: {err}). A smaller image may work.",
                title="Processing failed",
                print_exception=False,
            ) from None
        h, w = image.shape[-2:]
        settings = (f"lf {lf:.2f}, hf {hf:.2f}, " if has_lfim else "") + (
            f"lambda_pix {lp:.2f}, lambda_sem {ls:.2f}, " if two_sets else ""
        )
        timing = (
            f"**{res.seconds:.2f} s** for {w} x {h} px -> {res.sr.shape[1]} x {res.sr.shape[0]} px "
            f"({settings}colour fix {color_fix}; {_describe(pipe)})"
        )
        log.info("fidesr-app: %s", timing.replace("**", ""))
        # The SR is shown from its PNG (no second encoding); the bicubic baseline as a lossless array.
        return (res.bicubic, str(res.png)), timing, gr.DownloadButton(value=str(res.png), interactive=True)

    # delete_cache: Gradio's copies of uploads and results go after an hour (and when the server restarts).
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# FiDeSR one-step diffusion super-resolution\n"
            f"Upload a low-quality image, press **Upscale**, then move the LFIM strengths: the low-frequency "
            f"branch smooths blotches where the input is flat, the high-frequency branch adds the model's "
            f"detail where the input has some. They act at inference, without retraining. Model: {_describe(pipe)}."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Low-quality image", file_types=["image"], type="filepath", elem_id="fidesr-upload"
                )
                lf = gr.Slider(
                    0.0,
                    STRENGTH_MAX,
                    value=lf0,
                    step=0.05,
                    interactive=has_lfim,
                    elem_id="fidesr-lf",
                    label="LFIM low-frequency strength" + no_lfim,
                )
                hf = gr.Slider(
                    0.0,
                    STRENGTH_MAX,
                    value=hf0,
                    step=0.05,
                    interactive=has_lfim,
                    elem_id="fidesr-hf",
                    label="LFIM high-frequency strength" + no_lfim,
                )
                lp = gr.Slider(
                    0.0,
                    2.0,
                    value=1.0,
                    step=0.05,
                    visible=two_sets,
                    elem_id="fidesr-lambda-pix",
                    label="PiSA-SR pixel-level set strength (lambda_pix)",
                )
                ls = gr.Slider(
                    0.0,
                    2.0,
                    value=1.0,
                    step=0.05,
                    visible=two_sets,
                    elem_id="fidesr-lambda-sem",
                    label="PiSA-SR semantic-level set strength (lambda_sem)",
                )
                color = gr.Radio(
                    list(COLOR_FIXES), value=pipe.color_fix, label="Colour fix", elem_id="fidesr-color"
                )
                button = gr.Button("Upscale", variant="primary", elem_id="fidesr-run")
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[upload], label="Examples")
            with gr.Column(scale=2):
                compare = gr.ImageSlider(
                    label="bicubic | FiDeSR", format="png", interactive=False, elem_id="fidesr-compare"
                )
                timing = gr.Markdown(elem_id="fidesr-time")
                download = gr.DownloadButton(
                    "Download the full-resolution PNG", interactive=False, elem_id="fidesr-download"
                )
        inputs, outputs = [upload, lf, hf, lp, ls, color], [compare, timing, download]
        # One model, one request at a time (queue); a burst of slider moves runs only the last one.
        button.click(
            lambda *a: run(*a, required=True), inputs, outputs, concurrency_limit=1, concurrency_id="model"
        )
        gr.on(
            [lf.release, hf.release, lp.release, ls.release, color.input],
            lambda *a: run(*a, required=False),
            inputs,
            outputs,
            concurrency_limit=1,
            concurrency_id="model",
            trigger_mode="always_last",
        )
        # A new image: the previous result no longer belongs to it.
        upload.change(lambda: (None, "", gr.DownloadButton(value=None, interactive=False)), None, outputs)
    return demo


def launch_app(
    demo: gr.Blocks,
    work_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    limits: InputLimits = InputLimits(),
    queue_size: int = 16,
) -> str:
    """Serve the page on ``host:port`` (no share link, no analytics, no server-side rendering, no MCP);
    returns the local URL (after Ctrl-C when ``block``). Gradio's server refuses an upload over
    ``limits.max_bytes`` (HTTP 413) before storing it, and a request when ``queue_size`` already wait."""
    import gradio as gr

    # System fonts only: a theme with web fonts would fetch them at run time (the page must work offline).
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )
    _, url, _ = demo.queue(default_concurrency_limit=1, max_size=queue_size).launch(
        max_file_size=limits.max_bytes,
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=False,
        quiet=False,
        prevent_thread_lock=not block,
        allowed_paths=[str(Path(work_dir).resolve())],
        ssr_mode=False,
        mcp_server=False,
        theme=theme,
        footer_links=[],
    )
    return url
