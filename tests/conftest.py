"""Shared test fixtures: real media, one small synthetic corpus, one local Ray for the session."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from l2s.pipeline.runtime import LOCAL_RAY_ENV

# Every local Ray of the session (ray_local, the CLI's in subprocesses, the multi-node cluster)
# as l2s.pipeline.runtime.connect starts one, set before anything imports Ray Data.
for name, value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(name, value)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _shared() -> Path:
    """The workplace's shared data (real fixtures, GRID s1): $L2S_SHARED, else `shared/` beside the
    clone, else /work/shared (where a clone elsewhere, such as CI's, still finds it)."""
    candidates = [os.environ.get("L2S_SHARED"), Path(__file__).resolve().parents[2] / "shared"]
    for candidate in [*candidates, "/work/shared"]:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parents[2] / "shared"


SHARED = _shared()
FIXTURES = SHARED / "fixtures" / "real"
GRID_S1 = SHARED / "data" / "grid_s1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a `slow` test first: the suite runs in two processes, each taking whole files
    (`-n 2 --dist loadfile`), and the two finish together when the longest files start first.
    On a machine without a GPU, `gpu` tests are skipped."""
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: file order otherwise kept
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_clips() -> list[Path]:
    """The five real talking-face clips of ../shared/fixtures/real (skip if that folder is absent)."""
    clips = sorted(FIXTURES.glob("*.mp4"))
    if not clips:
        pytest.skip(f"real fixtures not found at {FIXTURES}")
    return clips


@pytest.fixture(scope="session")
def real_speech() -> Path:
    wav = FIXTURES / "python-pesq__speech.wav"
    if not wav.exists():
        pytest.skip(f"real speech fixture not found at {wav}")
    return wav


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic corpus (2 seen speakers × 10 utterances + 1 unseen speaker), made once."""
    from l2s.synth.corpus import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    list(
        generate(
            SynthConfig(speakers=2, utterances=10, unseen_speakers=1, seed=7), root, progress=False
        )
    )
    return root


@pytest.fixture(scope="session")
def synth_manifest(synth_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The synthetic corpus's manifest."""
    from l2s.corpora import scan, write_manifest

    rows, skips = scan("synthetic", str(synth_corpus))
    assert not skips
    uri = str(tmp_path_factory.mktemp("manifest") / "synthetic.parquet")
    write_manifest(rows, uri)
    return uri


@pytest.fixture(scope="session")
def synth_features(synth_manifest: str, ray_local, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Its features, made once by the Ray Data pipeline."""
    from l2s.pipeline.preprocess import PreprocessConfig, preprocess

    out = str(tmp_path_factory.mktemp("features"))
    summary = preprocess(synth_manifest, out, PreprocessConfig(shard_size=4))
    assert summary.features > 0
    return out


# Dummy credentials for the local S3 server. Ray workers take credentials from their node's
# environment (l2s never puts them in a runtime_env), so they are set before Ray starts.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, sized for a 2-core machine."""
    import ray

    os.environ.update(S3_CREDENTIALS)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch, request) -> str:
    """A fresh bucket on the local server, with dummy credentials set for this test (and for the
    session's Ray workers, which cannot take them from this test: see S3_CREDENTIALS)."""
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("L2S_S3_ENDPOINT", s3_endpoint)
    name = request.node.name.replace("_", "-").lower()[:60]
    from l2s import storage

    fs, _ = storage.filesystem(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def checkpoint(synth_features: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A run directory holding one checkpoint of an untrained tiny model, with the dataset's
    speaker table and mel statistics."""
    from l2s.train import initial_checkpoint

    return initial_checkpoint(synth_features, str(tmp_path_factory.mktemp("run")))


def remux_faststart(src: Path, dst: Path) -> None:
    """(A helper for tests: `from conftest import remux_faststart`.) Same packets, index (moov) moved to the front: a cut copy still opens, then fails."""
    import av

    with (
        av.open(str(src)) as inp,
        av.open(str(dst), "w", options={"movflags": "+faststart"}) as out,
    ):
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
