"""Shared fixtures: paths to the real clips in ../shared, free ports, the installed CLI."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from streamav.host import streamav_command  # noqa: F401  (the tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CREMA_D = SHARED_DATA / "crema-d"
OBAMA = SHARED_DATA / "talking-head" / "uncrop_Obama.mp4"
CREMA_D_CLIPS = sorted(CREMA_D.glob("*.flv"))


@pytest.fixture(scope="session", autouse=True)
def _engine_dir(tmp_path_factory):
    """Engines built by tests (and by CLI subprocesses, which inherit the environment) go to a
    temporary folder, never into the checkout's engines/; one per session, so the default
    model's ONNX engine is built once."""
    folder = tmp_path_factory.mktemp("engines")
    previous = os.environ.get("STREAMAV_ENGINE_DIR")
    os.environ["STREAMAV_ENGINE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("STREAMAV_ENGINE_DIR", None)
    else:
        os.environ["STREAMAV_ENGINE_DIR"] = previous


@pytest.fixture
def one_torch_thread():
    """One PyTorch intra-op thread for the test (as `streamav train`/`eval` and the live model
    stage run): these small ops only lose to thread hand-offs on a shared 2-core CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_PRESET = "tiny-test"


@pytest.fixture(scope="module")
def shipped_model():
    """The model that ships in the package (the real trained weights), fp32, eval mode."""
    pytest.importorskip("torch")
    from streamav.data import default_model_folder
    from streamav.model.io import load_model

    folder = default_model_folder()
    if not (folder / "config.json").is_file():
        pytest.skip("no model shipped in this checkout")
    return load_model(folder).float().eval()


def tiny_config():
    """The default preset's architecture with every width divided by 4 to 16: for tests that
    check the machinery (evaluation, engines, benchmarks), not the model, on 2 shared cores."""
    from streamav.model.config import (AudioVQVAEConfig, MDVAEConfig, ModelConfig,
                                       RefineConfig, VisualVQVAEConfig)

    return ModelConfig(
        preset=TINY_PRESET,
        audio=AudioVQVAEConfig(channels=(4, 8, 8), residual_hidden=4, code_dim=2, n_codes=16),
        visual=VisualVQVAEConfig(channels=(8, 8, 8, 8), residual_blocks=1, residual_hidden=4,
                                 code_dim=4, n_codes=32),
        mdvae=MDVAEConfig(audio_dim=128, visual_dim=256, w_dim=16, z_av_dim=4, z_a_dim=2,
                          z_v_dim=2, gru_hidden=16, visual_feature_hidden=(64, 32),
                          posterior_hidden=(32, 16), prior_hidden=16,
                          audio_decoder_hidden=(32, 64), visual_decoder_hidden=(64, 128),
                          w_evidence_hidden=32),
        refine=RefineConfig(width=4, body_layers=1, up_width=4))


def require_shared_data() -> None:
    if not CREMA_D_CLIPS or not OBAMA.exists():
        pytest.skip(f"the real clips are not at {SHARED_DATA} (CI puts ../shared beside the repo)")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


def cli_env() -> dict[str, str]:
    """The environment for CLI subprocesses: headless, quiet MediaPipe."""
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env["GLOG_minloglevel"] = "2"
    return env


def default_sigint() -> None:
    """`preexec_fn` for a child that a test interrupts with SIGINT: Ctrl-C as in a terminal.

    A test run started in the background without job control (`cmd &` in a script) ignores
    SIGINT; children inherit that, Python then keeps it ignored, and a SIGINT sent by the test
    is lost (the child runs to the end and exits 0). The same for SIGHUP under `nohup`: streamav
    keeps a signal ignored that it was started with ignored (nohup semantics), so the child
    gets the default dispositions of a terminal's shell."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


class RandomFrames:
    """EngineInputs of fixed random frames (power spectra and faces in the model's ranges): for
    an engine build's own parity check where the test compares the outputs itself."""

    def reference_frames(self, frames: int, cache_dir=None):
        import numpy as np

        rng = np.random.default_rng(0)
        spectra = rng.gamma(1.0, 1e-3, (frames, 513)).astype(np.float32)
        faces = rng.uniform(-0.5, 0.5, (frames, 3, 64, 64)).astype(np.float32)
        return spectra, faces

    def reference_source(self) -> str:
        return "random frames (a test)"

    def calibration(self):
        raise AssertionError("fp32 engines calibrate nothing")


def drain(sub, wait_ms: int = 200) -> list:
    """Every message a subscriber still has (decoded), until it is quiet for `wait_ms`; then
    closes it."""
    from streamav.wire.protocol import decode

    messages = []
    while sub.poll(wait_ms):
        messages.append(decode(sub.recv_multipart()))
    sub.close(linger=0)
    return messages
