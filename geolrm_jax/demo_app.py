"""``geolrm-jax demo``: a Gradio web page around ``geolrm-jax reconstruct`` (optional extra ``demo``).

    geolrm-jax demo [--checkpoint CKPT] [--model-config CONFIG] [--host 127.0.0.1] [--port 7860]

Inputs, dropped or picked in the page (what ``reconstruct`` reads, see ``geolrm_jax.inputs``):

* posed views: the images together with their ``cameras.json`` or ``transforms.json`` (several files at once),
  or a ``.zip`` of such a folder;
* an SV3D orbit: a video file, or its 21 frames (several images without a cameras file);
* a Zero123++ grid: one image (3 rows x 2 columns of views).

"Try the bundled sample" reconstructs ``geolrm_jax/assets/sample``. Outputs: the Gaussians in a 3D viewer
(``.splat``), the mesh in a second viewer, the turntable video, and downloads of ``gaussians.ply``,
``gaussians.splat``, ``mesh.glb``, ``mesh.obj`` and ``summary.json``. A bad upload is reported in the page
(one line naming the file and the problem). The weights are found as ``reconstruct`` finds them
(``--checkpoint``, ``$GEOLRM_CHECKPOINT``, the cache, the bundled demo model; ``--random-weights`` for a pipeline
test, said so in the page). The server binds to 127.0.0.1 unless ``--host`` says otherwise, handles one
reconstruction at a time, and prints its URL.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import socket
import sys
import tempfile
import zipfile

from geolrm_jax import inference, inputs, reconstruct

MAX_UPLOAD_BYTES = 512 * 2**20  # a zip may expand to at most this much
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline


class UploadError(ValueError):
    """An upload that cannot be turned into an input of ``reconstruct``."""


def _extract_zip(path: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UploadError(f"{path.name}: not a readable zip file: {err}") from err
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        if sum(m.file_size for m in members) > MAX_UPLOAD_BYTES:
            raise UploadError(f"{path.name}: expands to more than {MAX_UPLOAD_BYTES >> 20} MiB")
        for m in members:
            target = (dest / m.filename).resolve()
            if dest.resolve() not in target.parents:
                raise UploadError(f"{path.name}: member {m.filename!r} points outside the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    # The input is the folder holding the cameras file (or the only folder, or the archive's root).
    cameras = sorted(p.parent for name in inputs.CAMERA_FILES for p in dest.rglob(name))
    if cameras:
        return cameras[0]
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def prepare_input(files, work: pathlib.Path) -> pathlib.Path:
    """Uploaded file paths -> a path ``reconstruct`` reads (a folder, a video or a grid image) under ``work``."""
    paths = [pathlib.Path(f if isinstance(f, str | os.PathLike) else f.name) for f in files or []]
    if not paths:
        raise UploadError("no files uploaded: drop images with cameras.json/transforms.json, a zip, an SV3D video "
                          "or a Zero123++ grid, or try the bundled sample")
    work.mkdir(parents=True, exist_ok=True)
    if len(paths) == 1 and paths[0].suffix.lower() == ".zip":
        return _extract_zip(paths[0], work / "zip")
    if len(paths) == 1:
        suffix = paths[0].suffix.lower()
        if suffix not in inputs.VIDEO_SUFFIXES + inputs.IMAGE_SUFFIXES:
            raise UploadError(f"{paths[0].name}: not an image, a video or a zip (suffix {suffix or 'none'})")
        target = work / paths[0].name
        shutil.copyfile(paths[0], target)
        return target
    folder = work / "views"
    folder.mkdir()
    for p in paths:
        if p.suffix.lower() not in inputs.IMAGE_SUFFIXES and p.name not in inputs.CAMERA_FILES:
            raise UploadError(f"{p.name}: expected images and cameras.json / transforms.json only")
        shutil.copyfile(p, folder / p.name)
    return folder


def _summary_markdown(summary: dict, mesh_note: str) -> str:
    lines = [f"**Model: {summary['model']}.**" if summary["random_weights"] else f"Model: {summary['model']}"]
    lines.append(f"Input: {summary['input_kind']}, {summary['num_views']} views at {summary['image_size']} px; "
                 f"{summary['gaussians_written']} Gaussians; {mesh_note}")
    total = sum(summary["timings_s"].values())
    lines.append(f"Time: {total:.1f} s on {summary['device']} (" +
                 ", ".join(f"{k} {v:.1f} s" for k, v in summary["timings_s"].items()) + ")")
    return "\n\n".join(lines)


class DemoRunner:
    """Runs one reconstruction per call with fixed model and output settings; outputs go under ``root``."""

    def __init__(self, args, root: pathlib.Path):
        self.args = args
        self.root = root

    def reconstruct_argv(self, source: pathlib.Path, out: pathlib.Path, kind: str) -> list[str]:
        a = self.args
        argv = [str(source), "-o", str(out), "--input-kind", kind, "--video-size", str(a.video_size),
                "--video-frames", str(a.video_frames), "--fps", str(a.fps)]
        if a.checkpoint:
            argv += ["--checkpoint", a.checkpoint]
        if a.model_config:
            argv += ["--model-config", a.model_config]
        if a.random_weights:
            argv.append("--random-weights")
        return argv

    def run(self, source: pathlib.Path, kind: str = "auto", make_mesh: bool = True):
        """-> (splat path, mesh .glb path or None, video path, [download paths], summary markdown)."""
        from geolrm_jax import export, mesh

        out = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=self.root)) / "result"
        args = reconstruct._parser().parse_args(self.reconstruct_argv(source, out, kind))
        summary = reconstruct.run(args)
        mesh_note = "no mesh asked for"
        if make_mesh:
            settings = mesh.MeshSettings(resolution=self.args.mesh_resolution, num_views=self.args.mesh_views,
                                         image_size=self.args.mesh_view_size)
            try:
                counts = mesh.write_mesh_files(out, export.read_ply(out / "gaussians.ply"), settings)
                mesh_note = f"mesh: {counts['vertices']} vertices, {counts['faces']} faces"
            except (mesh.MeshError, ImportError) as err:
                mesh_note = f"no mesh: {err}"
        names = ["gaussians.ply", "gaussians.splat", *mesh.MESH_FILES, "summary.json"]
        downloads = [str(out / n) for n in names if (out / n).exists()]
        glb = out / "mesh.glb"
        video = out / "turntable.mp4"
        return (str(out / "gaussians.splat"), str(glb) if glb.exists() else None,
                str(video) if video.exists() else None, downloads, _summary_markdown(summary, mesh_note))


def build_app(runner: DemoRunner):
    """The Gradio Blocks page (not launched)."""
    import gradio as gr

    def reconstruct_upload(files, kind, make_mesh, progress=gr.Progress(track_tqdm=True)):
        work = pathlib.Path(tempfile.mkdtemp(prefix="upload-", dir=runner.root))
        try:
            source = prepare_input(files, work)
            return runner.run(source, kind, make_mesh)
        except (UploadError, inputs.InputError, FileNotFoundError, FileExistsError, ValueError) as err:
            raise gr.Error(str(err), print_exception=False) from None

    def reconstruct_sample(make_mesh, progress=gr.Progress(track_tqdm=True)):
        return runner.run(reconstruct.SAMPLE_DIR, "posed", make_mesh)

    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="GeoLRM-JAX demo", analytics_enabled=False) as app:
        gr.Markdown("# GeoLRM-JAX: posed views in, 3D Gaussians and a mesh out\n"
                    "Drop posed views (images + `cameras.json` or `transforms.json`, or a zip of the folder), an "
                    "SV3D orbit video or its frames, or a Zero123++ grid image.")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Input files", file_count="multiple", elem_id="input-files")
                kind = gr.Radio(list(inputs.INPUT_KINDS), value="auto", label="Input kind")
                make_mesh = gr.Checkbox(value=True, label="Also extract a mesh (TSDF fusion)")
                run_button = gr.Button("Reconstruct", variant="primary", elem_id="run-button")
                sample_button = gr.Button("Try the bundled sample", elem_id="sample-button")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                with gr.Row():
                    splats = gr.Model3D(label="Gaussians (.splat)", elem_id="gaussians-view", height=300)
                    mesh_view = gr.Model3D(label="Mesh (.glb)", elem_id="mesh-view", height=300)
                with gr.Row():
                    video = gr.Video(label="Turntable", elem_id="turntable", autoplay=True, loop=True, height=300)
                    downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads", height=300)
        outputs = [splats, mesh_view, video, downloads, status]
        run_button.click(reconstruct_upload, [files, kind, make_mesh], outputs, concurrency_limit=1)
        sample_button.click(reconstruct_sample, [make_mesh], outputs, concurrency_limit=1)
    app.theme_for_launch = theme
    return app


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geolrm-jax demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="Orbax folder or .safetensors/.ckpt/.pt (default: reconstruct's search)")
    p.add_argument("--model-config", help="official | tiny | config.json (default: as reconstruct)")
    p.add_argument("--random-weights", action="store_true", help="seeded random weights (a pipeline test)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    p.add_argument("--video-size", type=int, default=384, help="turntable size (even)")
    p.add_argument("--video-frames", type=int, default=72)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--mesh-resolution", type=int, default=128)
    p.add_argument("--mesh-views", type=int, default=48)
    p.add_argument("--mesh-view-size", type=int, default=192)
    p.add_argument("--workdir", help="where outputs go (default: a new temporary folder)")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        import gradio as gr
    except ImportError as err:
        print(f"geolrm-jax demo: error: the demo needs the optional extra 'demo' (pip install -e '.[demo]'): {err}",
              file=sys.stderr)
        return 2
    if args.video_size % 2:
        print(f"geolrm-jax demo: error: --video-size {args.video_size} must be even (MP4)", file=sys.stderr)
        return 2
    try:
        inference.find_checkpoint(args.checkpoint)
    except FileNotFoundError as err:
        print(f"geolrm-jax demo: error: {err}", file=sys.stderr)
        return 2
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="geolrm-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    app = build_app(DemoRunner(args, root))
    port = args.port or free_port(args.host)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=args.host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
               theme=app.theme_for_launch, allowed_paths=[str(root)], footer_links=[])
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"geolrm-jax demo: serving on http://{host}:{port} (outputs in {root}); Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    del gr
    return 0
