"""The HTTP endpoint on Ray Serve: a video in, speech (or the video with speech) out.

    l2s serve --checkpoint out/runs/tiny                     # http://127.0.0.1:8000/
    serve run l2s.serve.app:build_app checkpoint=out/runs/tiny max_batch_size=4
    L2S_CHECKPOINT=s3://models/run serve build l2s.serve.app:app -o serve.yaml  # RayService

Routes (FastAPI; OpenAPI at /docs and /openapi.json):
    GET  /            a web page: upload a video, play or download the result
    GET  /healthz     {"status": "ok", ...}
    POST /v1/speech   multipart `video` (+ optional `speaker`) → audio/wav, 16 kHz mono
    POST /v1/dub      the same → video/mp4: the video stream copied, the speech as its audio

Bad input never gives a 500: 400 for a body that is not a multipart form, 413 for an upload
over the size limit, 415 for a file that is not a video FFmpeg can read (corrupt, truncated, audio
only, an unknown codec), 422 for a form without a usable `video` (none, empty, a NUL byte in its
name) or a video that cannot be spoken (too long, too large a frame, no face, decoding fails
midway), each with `{"detail": reason}`.

The ingress does no heavy work itself: it streams the upload to a temporary file
(l2s/serve/upload.py) and hands its path to the deployments of l2s/serve/deployments.py; for
/v1/dub it muxes the speech in (a stream copy) in a thread and streams the result from disk.
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
from typing import Any

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
from l2s.serve.deployments import Preprocess, Synthesizer
from l2s.serve.upload import MAX_FIELD_BYTES, Upload, received
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
ERRORS = {
    400: {"description": "Not a multipart/form-data body"},
    413: {"description": "Upload over the size limit"},
    415: {"description": "Not a video FFmpeg can read (corrupt, audio only, unknown codec)"},
    422: {
        "description": "No usable `video` in the form, or a video that cannot be spoken "
        "(too long, too large, no face, ...)"
    },
}


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
    cfg: ServeConfig, preprocess: DeploymentHandle, synthesizer: DeploymentHandle
) -> FastAPI:
    """The FastAPI app of one ingress replica, calling the deployments through their handles."""
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

    async def speech_of(upload: Upload, fields: dict[str, str]) -> tuple[np.ndarray, float]:
        """The upload's speech wav_S and the fraction of frames with a face. Preprocess's
        pending result goes to the Synthesizer as it is: the mouth ROIs (0.7 MB for 3 s, 14 MB
        for 60 s) pass from one replica to the other through Ray's object store, never through
        this replica, and the face ratio comes back with the speech."""
        try:
            rois = preprocess.rois.remote(upload)
            return await synthesizer.speak.remote(rois, fields.get("speaker") or None)
        except Rejected as e:
            raise HTTPException(e.status, e.reason) from None

    def headers(upload: Upload, wav_S: np.ndarray, face_ratio: float, suffix: str) -> dict:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload.name).stem) or "video"
        return {
            "Content-Disposition": f'inline; filename="{stem}{suffix}"',
            "X-Audio-Seconds": f"{len(wav_S) / AUDIO.sample_rate:.3f}",
            "X-Face-Ratio": f"{face_ratio:.3f}",
        }

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "checkpoint": cfg.checkpoint}

    @api.post(
        "/v1/speech",
        response_class=Response,
        responses={200: {"content": {"audio/wav": {}}, "description": "16 kHz mono WAV"}, **ERRORS},
        openapi_extra=UPLOAD_FORM,
    )
    async def speech(request: Request) -> Response:
        """Speech for the video: a WAV as long as the video."""
        async with received(request, cfg.max_upload_bytes) as (upload, fields):
            wav_S, face_ratio = await speech_of(upload, fields)
        return Response(
            wav_bytes(wav_S),
            media_type="audio/wav",
            headers=headers(upload, wav_S, face_ratio, ".wav"),
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
                wav_S, face_ratio = await speech_of(upload, fields)
                dubbed = await asyncio.to_thread(_dub, upload, wav_S, folder)
        except BaseException:
            shutil.rmtree(folder)
            raise
        return FileResponse(
            dubbed,
            media_type="video/mp4",
            headers=headers(upload, wav_S, face_ratio, ".dub.mp4"),
            background=BackgroundTask(shutil.rmtree, folder),
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


# Up to 64 requests in work, their uploads on disk; beyond 16 more waiting, a 503. A request
# that waits for the ingress has its whole body buffered in Serve's HTTP proxy.
@serve.deployment(
    max_ongoing_requests=64, max_queued_requests=16, ray_actor_options={"num_cpus": 0.1}
)
@serve.ingress()
class Api:
    """The HTTP ingress; its FastAPI app is built in the replica (`__serve_build_asgi_app__`),
    so that the routes can close over this deployment's config and handles."""

    def __init__(
        self, preprocess: DeploymentHandle, synthesizer: DeploymentHandle, cfg: ServeConfig
    ) -> None:
        self.preprocess = preprocess
        self.synthesizer = synthesizer
        self.cfg = cfg

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self.cfg, self.preprocess, self.synthesizer)


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
    """The application graph: ingress → Preprocess → Synthesizer, sized by `cfg`."""
    from l2s.pipeline.runtime import worker_env

    preprocess = Preprocess.options(
        autoscaling_config={
            "min_replicas": cfg.min_preprocess_replicas,
            "initial_replicas": cfg.min_preprocess_replicas,
            "max_replicas": cfg.max_preprocess_replicas,
            # One clip in work per replica: more waiting than that adds a replica.
            "target_ongoing_requests": 1,
            "upscale_delay_s": 2.0,
            "downscale_delay_s": 120.0,
        },
        ray_actor_options={"num_cpus": cfg.preprocess_cpus, **worker_env()},
    ).bind(cfg)
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
    return Api.bind(preprocess, synthesizer, cfg)


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


def start(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Run the app on the connected Ray (a local one is started if none is) and return its URL."""
    from l2s.pipeline.runtime import connect

    connect()
    serve.start(http_options={"host": host, "port": port})
    serve.run(app_for(cfg), name="l2s", route_prefix="/")
    return f"http://{host}:{port}"
