"""The HTTP endpoint on Ray Serve: a video in, speech (or the video with speech) out.

    l2s serve --checkpoint out/runs/tiny                     # http://127.0.0.1:8000/
    serve run l2s.serve.app:build_app checkpoint=out/runs/tiny max_batch_size=4
    L2S_CHECKPOINT=s3://models/run serve build l2s.serve.app:app -o serve.yaml  # RayService

Routes (FastAPI; OpenAPI at /docs and /openapi.json):
    GET  /            a web page: upload a video, play or download the result
    GET  /healthz     {"status": "ok", ...}
    POST /v1/speech   multipart `video` (+ optional `speaker`) → audio/wav, 16 kHz mono
    POST /v1/dub      the same → video/mp4: the video stream copied, the speech as its audio
    POST /v1/lipsync  multipart `video` + `speech` → video/mp4: the lips re-drawn to the speech,
                      which is its audio (only when the server has a lip generator; else 404)
The speech routes say in the header `X-Lip-Text` what the lips were read to say (upper-case
letters, spaces and apostrophes only), beside `X-Audio-Seconds` and `X-Face-Ratio`.

Bad input never gives a 500: 400 for a body that is not a multipart form, 413 for an upload
over the size limit, 415 for a file that is not a video FFmpeg can read (corrupt, truncated, audio
only, an unknown codec), 422 for a form without a usable `video` (none, empty, a NUL byte in its
name) or a video that cannot be spoken (too long, too large a frame, no face, decoding fails
midway), each with `{"detail": reason}`. /v1/lipsync follows the same rules, its `speech` file
too (415: not audio FFmpeg can read); the two files together stay within the upload limit.

The ingress replicas are the CPU stage (l2s/serve/deployments.py): each streams an upload to a
temporary file (l2s/serve/upload.py), tracks the mouth in it in a thread of its own and sends the
ROIs to the Synthesizer, the model's deployment; for /v1/dub it muxes the speech in (a stream
copy) in a thread and streams the result from disk. They autoscale on the requests in work.
The /docs and /redoc pages load their scripts from the app itself (fastapi-offline), so they work
on a cluster without internet access.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Receive, Scope, Send

from l2s import __version__
from l2s.audio import wav_bytes
from l2s.config import AUDIO
from l2s.serve.config import Rejected, ServeConfig
from l2s.serve.deployments import LipSyncer, Preprocessor, Synthesizer, stage_cpu
from l2s.serve.upload import MAX_FIELD_BYTES, Upload, received, received_files
from l2s.video import VideoError, mux_audio

# Multipart framing around the file (boundaries, part headers, the `speaker` field) is allowed
# on top of the upload limit when the request's Content-Length is checked.
MULTIPART_SLACK = 64 * 1024
# The form the routes read themselves (upload.received), as OpenAPI would state it for them.
UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {
                        "video": {
                            "type": "string",
                            "format": "binary",
                            "description": "A video of one talking face (mp4, webm, mov, ...)",
                        },
                        "speaker": {
                            "type": "string",
                            "maxLength": MAX_FIELD_BYTES,
                            "description": "A speaker the model was trained on "
                            "(default: their average)",
                        },
                    },
                }
            }
        },
    }
}
LIPSYNC_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video", "speech"],
                    "properties": {
                        "video": UPLOAD_FORM["requestBody"]["content"]["multipart/form-data"][
                            "schema"
                        ]["properties"]["video"],
                        "speech": {
                            "type": "string",
                            "format": "binary",
                            "description": "The speech the lips should say (wav, mp3, m4a, or "
                            "a video's audio)",
                        },
                    },
                }
            }
        },
    }
}
ERRORS = {
    400: {"description": "Not a multipart/form-data body"},
    413: {"description": "Upload over the size limit"},
    415: {"description": "Not a video FFmpeg can read (corrupt, audio only, unknown codec)"},
    422: {
        "description": "No usable `video` in the form, or a video that cannot be spoken "
        "(too long, too large, no face, ...)"
    },
}


class Said(NamedTuple):
    """What the deployments made of an upload."""

    wav_S: np.ndarray
    text: str  # what the lips were read to say
    face_ratio: float


class UploadLimit:
    """ASGI middleware: a request whose Content-Length is over the upload limit gets a 413 before
    anything is read. A body without one is counted as it arrives (`upload.received`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if (
            scope["type"] == "http"
            and length.isdigit()
            and int(length) > self.max_bytes + MULTIPART_SLACK
        ):
            detail = f"upload is {int(length) / 2**20:.1f} MiB; {self._limit()}"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _limit(self) -> str:
        return f"the limit is {self.max_bytes / 2**20:g} MiB"


def make_api(
    cfg: ServeConfig,
    preprocessor: Preprocessor,
    synthesizer: DeploymentHandle,
    lipsyncer: DeploymentHandle | None = None,
) -> FastAPI:
    """The FastAPI app of one ingress replica: its own preprocessor, the deployments through
    their handles."""
    api = FastAPIOffline(
        title="l2s",
        version=__version__,
        summary="Lip-to-speech: a silent talking-face video in, speech out.",
        description=(
            f"Limits: uploads up to {cfg.max_upload_mb:g} MiB, videos up to {cfg.max_seconds:g} s "
            f"and {cfg.max_side} px on the long side. Checkpoint: `{cfg.checkpoint}`."
        ),
    )
    api.add_middleware(UploadLimit, max_bytes=cfg.max_upload_bytes)
    page = resources.files("l2s.serve").joinpath("index.html").read_text(encoding="utf-8")

    async def speech_of(upload: Upload, fields: dict[str, str]) -> Said:
        """The upload's speech, the lips' reading and the fraction of frames with a face. The
        mouth ROIs (0.7 MB for 3 s, 14 MB for 60 s) go to the Synthesizer through Ray's object
        store."""
        try:
            roi_THW, face_ratio = await preprocessor.rois(upload)
            wav_S, text = await synthesizer.speak.remote(roi_THW, fields.get("speaker") or None)
            return Said(wav_S, text, face_ratio)
        except Rejected as e:
            raise HTTPException(e.status, e.reason) from None

    def headers(upload: Upload, said: Said, suffix: str) -> dict:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload.name).stem) or "video"
        return {
            "Content-Disposition": f'inline; filename="{stem}{suffix}"',
            "X-Audio-Seconds": f"{len(said.wav_S) / AUDIO.sample_rate:.3f}",
            "X-Face-Ratio": f"{said.face_ratio:.3f}",
            "X-Lip-Text": said.text,
        }

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "checkpoint": cfg.checkpoint,
            "lipsync": cfg.lipsync,
        }

    @api.post(
        "/v1/speech",
        response_class=Response,
        responses={200: {"content": {"audio/wav": {}}, "description": "16 kHz mono WAV"}, **ERRORS},
        openapi_extra=UPLOAD_FORM,
    )
    async def speech(request: Request) -> Response:
        """Speech for the video: a WAV as long as the video."""
        async with received(request, cfg.max_upload_bytes) as (upload, fields):
            said = await speech_of(upload, fields)
        return Response(
            wav_bytes(said.wav_S), media_type="audio/wav", headers=headers(upload, said, ".wav")
        )

    @api.post(
        "/v1/dub",
        response_class=Response,
        responses={
            200: {"content": {"video/mp4": {}}, "description": "The video with speech"},
            **ERRORS,
        },
        openapi_extra=UPLOAD_FORM,
    )
    async def dub(request: Request) -> FileResponse:
        """The same video with the generated speech as its only audio track (mp4; the video
        stream is copied, not re-encoded)."""
        folder = tempfile.mkdtemp(prefix="l2s-dub-")
        try:
            async with received(request, cfg.max_upload_bytes) as (upload, fields):
                said = await speech_of(upload, fields)
                dubbed = await asyncio.to_thread(_dub, upload, said.wav_S, folder)
        except BaseException:
            shutil.rmtree(folder)
            raise
        return FileResponse(
            dubbed,
            media_type="video/mp4",
            headers=headers(upload, said, ".dub.mp4"),
            background=BackgroundTask(shutil.rmtree, folder),
        )

    @api.post(
        "/v1/lipsync",
        response_class=Response,
        responses={
            200: {"content": {"video/mp4": {}}, "description": "The video, lips re-drawn"},
            404: {"description": "This server has no lip generator"},
            **ERRORS,
        },
        openapi_extra=LIPSYNC_FORM,
    )
    async def lipsync(request: Request) -> Response:
        """The video with its lips re-drawn to the speech, which is its only audio track (mp4,
        h264 yuv420p at the source's size and frame rate; the speech cut or padded to the
        video). The two files together stay within the upload limit."""
        if lipsyncer is None:
            raise HTTPException(404, "this server re-draws no lips: start it with --lipsync RUN")
        async with received_files(request, cfg.max_upload_bytes, ("video", "speech")) as (
            uploads,
            _,
        ):
            try:
                rendered = await lipsyncer.render.remote(uploads["video"], uploads["speech"])
            except Rejected as e:
                raise HTTPException(e.status, e.reason) from None
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(uploads["video"].name).stem) or "video"
        return Response(
            rendered,
            media_type="video/mp4",
            headers={"Content-Disposition": f'inline; filename="{stem}.lipsync.mp4"'},
        )

    return api


def _dub(upload: Upload, wav_S: np.ndarray, folder: str) -> str:
    """The upload with the speech muxed in (`video.mux_audio`, as `l2s dub` does it), as a file
    in `folder`."""
    speech, out = Path(folder) / "speech.wav", Path(folder) / "out.mp4"
    speech.write_bytes(wav_bytes(wav_S))
    try:
        mux_audio(upload.path, str(speech), str(out))
    except VideoError as e:  # name the upload, not its temporary file
        raise HTTPException(415, str(e).replace(upload.path, upload.name)) from None
    return str(out)


# Up to 64 requests in work per replica, their uploads on disk; beyond 16 more waiting, a 503. A
# request that waits for the ingress has its whole body buffered in Serve's HTTP proxy.
@serve.deployment(max_ongoing_requests=64, max_queued_requests=16)
@serve.ingress()
class Api:
    """The HTTP ingress and the preprocessing; its FastAPI app is built in the replica
    (`__serve_build_asgi_app__`), so that the routes can close over this replica's config,
    preprocessor and handles."""

    def __init__(
        self,
        synthesizer: DeploymentHandle,
        cfg: ServeConfig,
        lipsyncer: DeploymentHandle | None = None,
    ) -> None:
        self.preprocessor = Preprocessor(cfg)
        self.synthesizer = synthesizer
        self.cfg = cfg
        self.lipsyncer = lipsyncer

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self.cfg, self.preprocessor, self.synthesizer, self.lipsyncer)

    def stage_cpu(self) -> tuple[str, dict[str, float]]:
        return stage_cpu(self.preprocessor.clock)


def model_gpus(cfg: ServeConfig) -> float:
    """GPUs per model replica: as configured, else one if the Ray cluster we are connected to
    (or, before connecting, this machine) has a GPU."""
    if cfg.model_gpus is not None:
        return cfg.model_gpus
    import ray

    if ray.is_initialized():
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def app_for(cfg: ServeConfig) -> serve.Application:
    """The application graph: the ingress, which preprocesses, → Synthesizer (and LipSyncer
    when a lip generator is configured), sized by `cfg`."""
    from l2s.pipeline.runtime import worker_env

    synthesizer = Synthesizer.options(
        num_replicas=cfg.model_replicas,
        # Room for several full batches in flight, so that batches can form at all.
        max_ongoing_requests=max(64, 4 * cfg.max_batch_size),
        ray_actor_options={
            "num_cpus": cfg.model_cpus,
            "num_gpus": model_gpus(cfg),
            **worker_env(),
        },
    ).bind(cfg)
    lipsyncer = None
    if cfg.lipsync:
        lipsyncer = LipSyncer.options(
            ray_actor_options={
                "num_cpus": cfg.lipsync_cpus,
                "num_gpus": model_gpus(cfg),
                **worker_env(),
            }
        ).bind(cfg)
    return Api.options(
        autoscaling_config={
            "min_replicas": cfg.min_preprocess_replicas,
            "initial_replicas": cfg.min_preprocess_replicas,
            "max_replicas": cfg.max_preprocess_replicas,
            # One clip preprocessing per replica and one in its other phases (upload, model,
            # response): more in work than that adds a replica.
            "target_ongoing_requests": 2,
            "upscale_delay_s": 2.0,
            "downscale_delay_s": 120.0,
        },
        ray_actor_options={"num_cpus": cfg.preprocess_cpus, **worker_env()},
    ).bind(synthesizer, cfg, lipsyncer)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The builder `serve run` and Serve config files (`import_path` + `args`) call with their
    `key=value` arguments: the fields of `ServeConfig`; `checkpoint` is required."""
    return app_for(ServeConfig.from_args(args))


def __getattr__(name: str) -> serve.Application:
    """`l2s.serve.app:app`, for `serve build` and configs without `args` (they take an app, not a
    builder): the app for the checkpoint in $L2S_CHECKPOINT. Built only when asked for, so that
    replicas importing this module build nothing."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    checkpoint = os.environ.get("L2S_CHECKPOINT")
    if not checkpoint:
        raise ValueError("l2s.serve.app:app serves the checkpoint in $L2S_CHECKPOINT; set it")
    return build_app({"checkpoint": checkpoint})


def check_fits(cfg: ServeConfig, cpus: float) -> None:
    """Refuse an app that a Ray of `cpus` CPUs can never start: Serve would wait for the CPUs
    forever, saying so only in its controller's log. What the app reserves before it can answer:
    its least ingress replicas, its model replicas and the lip generator's (Serve's proxy and
    controller reserve none)."""
    lipsync = cfg.lipsync_cpus if cfg.lipsync else 0.0
    need = (
        cfg.min_preprocess_replicas * cfg.preprocess_cpus
        + cfg.model_replicas * cfg.model_cpus
        + lipsync
    )
    if need > cpus + 1e-9:
        lipsync_part = f" + the lip generator {lipsync:g}" if cfg.lipsync else ""
        raise ValueError(
            f"the app reserves {need:g} CPUs to start ({cfg.min_preprocess_replicas} ingress "
            f"× {cfg.preprocess_cpus:g} + {cfg.model_replicas} model × {cfg.model_cpus:g}"
            f"{lipsync_part}) and this machine's Ray has {cpus:g}: lower preprocess_cpus or "
            "model_cpus, or serve on a larger machine or cluster"
        )


def start(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Run the app on the connected Ray (a local one is started if none is) and return its URL.
    On a local Ray, an app too large for this machine is refused (`check_fits`); a cluster may
    grow to fit it (an autoscaler), so there Serve waits."""
    from l2s.pipeline.adapter import Cluster
    from l2s.pipeline.runtime import connect

    connect()
    if not os.environ.get("RAY_ADDRESS"):
        check_fits(cfg, Cluster.current().cpus)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app_for(cfg), name="l2s", route_prefix="/")
    return f"http://{host}:{port}"
