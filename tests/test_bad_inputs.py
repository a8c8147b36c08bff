"""Every failure a user can cause, through the real CLI: one `streamav: error: ...` line on
stderr, the documented exit code (README "Exit codes"), no traceback.

The table covers usage errors (click's, through typer), flag values, TOML config values and
files, endpoints and output paths. The live cases publish on a port this module holds bound and
use an empty engine folder: a case that got as far as binding or building an engine would fail
with "in use" (exit 4) or leave a file there, so each one is also checked to fail before both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import CREMA_D_CLIPS, cli_env, free_tcp_port, streamav_command

STREAMAV = streamav_command()
CLIP = str(CREMA_D_CLIPS[0]) if CREMA_D_CLIPS else "clip-not-available.flv"

# (id, command line, exit code, a phrase of the error line, TOML config or None). In argv,
# {tmp} is a per-test folder, {config} the TOML file written from the last column, {file} a
# regular file, {clip} a real clip; "live" cases get the common flags of `_live_flags`.
CASES = [
    # -- usage errors (click, through typer) ---------------------------------------------------
    ("unknown-root-option", ["--bogus"], 2, "No such option: --bogus", None),
    ("no-command", [], 2, "missing command", None),
    ("unknown-command", ["livee"], 2, "No such command", None),
    ("unknown-live-option", ["live", "--bogus"], 2, "No such option: --bogus", None),
    ("max-frames-not-int", ["live", "--max-frames", "abc"], 2, "--max-frames", None),
    ("duration-not-number", ["live", "--duration", "soon"], 2, "--duration", None),
    ("width-not-int", ["live", "--width", "1.5"], 2, "--width", None),
    ("option-without-value", ["live", "--video"], 2, "--video", None),
    ("eval-without-model", ["eval"], 2, "Missing option '--model'", None),
    ("train-without-stage", ["train"], 2, "Missing argument", None),
    ("subscribe-count-not-int", ["subscribe", "--count", "x"], 2, "--count", None),
    ("corpus-no-command", ["corpus"], 2, "missing command", None),
    ("bench-frames-zero", ["bench", "--frames", "0"], 2, "--frames", None),
    # -- flag values ----------------------------------------------------------------------------
    ("max-frames-zero", ["live", "--video", "{clip}", "--max-frames", "0"], 2,
     "--max-frames must be at least 1", None),
    ("max-frames-negative", ["live", "--video", "{clip}", "--max-frames", "-3"], 2,
     "--max-frames", None),
    ("duration-nan", ["live", "--video", "{clip}", "--duration", "nan"], 2,
     "--duration must be a finite number", None),
    ("duration-inf", ["live", "--video", "{clip}", "--duration", "inf"], 2,
     "--duration must be a finite number", None),
    ("duration-zero", ["live", "--video", "{clip}", "--duration", "0"], 2, "--duration", None),
    ("duration-negative", ["live", "--video", "{clip}", "--duration", "-1"], 2, "--duration",
     None),
    ("width-zero", ["live", "--camera", "0", "--no-audio", "--width", "0"], 2, "--width", None),
    ("fps-zero", ["live", "--camera", "0", "--no-audio", "--fps", "0"], 2, "--fps", None),
    ("backend-unknown", ["live", "--video", "{clip}", "--backend", "bogus"], 2, "--backend",
     None),
    ("device-unknown", ["live", "--video", "{clip}", "--device", "tpu"], 2, "--device", None),
    ("noise-unknown", ["live", "--video", "{clip}", "--noise", "bogus"], 2, "unknown noise",
     None),
    ("several-streams-csv", ["live", "--video", "{clip}", "--video", "{clip}", "--csv",
                             "never-written.csv"], 2, "one stream only", None),
    ("max-faces-zero", ["live", "--video", "{clip}", "--max-faces", "0"], 2,
     "--max-faces must be in 1..16", None),
    ("max-faces-profile", ["live", "--video", "{clip}", "--max-faces", "2", "--profile", "ana"],
     2, "one person's calibration", None),
    ("max-faces-in-config", ["live", "--video", "{clip}", "--config", "{config}"], 2,
     "[face] max_faces must be in 1..16", "[face]\nmax_faces = 17\n"),
    ("no-audio-and-audio", ["live", "--video", "{clip}", "--no-audio", "--audio", "{clip}"], 2,
     "--no-audio cannot be combined", None),
    ("missing-video", ["live", "--video", "{tmp}/missing.mp4"], 2, "no such file", None),
    ("junk-video", ["live", "--video", "{file}"], 2, "cannot read", None),
    ("missing-model-folder", ["live", "--video", "{clip}", "--model", "{tmp}/no-model"], 2,
     "does not exist", None),
    ("missing-curve-key", ["live", "--video", "{clip}", "--curve-secret-key",
                           "{tmp}/none.key_secret"], 2, "--curve-secret-key", None),
    # -- endpoints --------------------------------------------------------------------------------
    ("publish-port-too-big", ["live", "--video", "{clip}", "--publish", "tcp://127.0.0.1:99999"],
     2, "not a TCP port", None),
    ("publish-port-zero", ["live", "--video", "{clip}", "--publish", "tcp://127.0.0.1:0"], 2,
     "not a TCP port", None),
    ("publish-no-port", ["live", "--video", "{clip}", "--publish", "tcp://127.0.0.1"], 2,
     "needs a host and a port", None),
    ("publish-no-transport", ["live", "--video", "{clip}", "--publish", "127.0.0.1:5555"], 2,
     "--publish", None),
    ("publish-udp", ["live", "--video", "{clip}", "--publish", "udp://127.0.0.1:5555"], 2,
     "unsupported transport", None),
    ("control-port-too-big", ["live", "--video", "{clip}", "--control", "tcp://127.0.0.1:70000"],
     2, "--control", None),
    ("control-same-as-publish", ["live", "--video", "{clip}", "--publish", "tcp://127.0.0.1:5999",
                                 "--control", "tcp://127.0.0.1:5999"], 2, "are the same", None),
    ("subscribe-port-too-big", ["subscribe", "--endpoint", "tcp://127.0.0.1:99999"], 2,
     "not a TCP port", None),
    ("subscribe-timeout-nan", ["subscribe", "--timeout", "nan"], 2, "--timeout", None),
    # -- output paths -----------------------------------------------------------------------------
    ("stats-json-is-a-directory", ["live", "--video", "{clip}", "--stats-json", "{tmp}"], 2,
     "is a directory", None),
    ("stats-json-under-a-file", ["live", "--video", "{clip}", "--stats-json", "{file}/s.json"], 2,
     "is not a directory", None),
    ("stats-json-unwritable", ["live", "--video", "{clip}", "--stats-json",
                               "/proc/streamav-no-such-dir/s.json"], 2, "cannot write", None),
    ("save-features-is-a-directory", ["live", "--video", "{clip}", "--save-features", "{tmp}"],
     2, "is a directory", None),
    # -- config files -----------------------------------------------------------------------------
    ("config-missing", ["live", "--config", "{tmp}/missing.toml"], 2, "no such config file",
     None),
    ("config-is-a-directory", ["live", "--config", "{tmp}"], 2, "is a directory", None),
    ("config-binary", ["live", "--config", "{clip}"], 2, "not a text", None),
    ("config-bad-toml", ["live", "--config", "{config}"], 2, "not valid TOML", "[ring\n"),
    ("config-unknown-section", ["live", "--config", "{config}"], 2, "unknown config section",
     "[rnig]\n"),
    ("config-unknown-key", ["live", "--config", "{config}"], 2, "unknown key",
     "[run]\nmax_frame = 3\n"),
    ("config-section-not-table", ["live", "--config", "{config}"], 2, "must be a table",
     "run = 5\n"),
    ("config-max-frames-string", ["live", "--config", "{config}"], 2,
     "[run] max_frames must be an integer", '[run]\nmax_frames = "three"\n'),
    ("config-realtime-string", ["live", "--config", "{config}"], 2, "[run] realtime",
     '[run]\nrealtime = "yes"\n'),
    ("config-queue-size-zero", ["live", "--config", "{config}"], 2, "[publish] queue_size",
     "[publish]\nqueue_size = 0\n"),
    ("config-send-hwm-negative", ["live", "--config", "{config}"], 2, "[publish] send_hwm",
     "[publish]\nsend_hwm = -5\n"),
    ("config-endpoint-bad-port", ["live", "--config", "{config}"], 2, "not a TCP port",
     '[publish]\nendpoint = "tcp://127.0.0.1:99999"\n'),
    ("config-model-threads-zero", ["live", "--config", "{config}"], 2, "[model] threads",
     "[model]\nthreads = 0\n"),
    ("config-backend-number", ["live", "--config", "{config}"], 2, "[model] backend",
     "[model]\nbackend = 3\n"),
    ("loop-without-a-file", ["live", "--camera", "0", "--no-audio", "--loop"], 2,
     "--loop plays files again", None),
    ("config-staleness-zero", ["live", "--config", "{config}"], 2,
     "[run] max_staleness_s must be in 0.05..3600", "[run]\nmax_staleness_s = 0\n"),
    # the engine choice (streamav.engines.choice), checked when the config loads
    ("config-device-unknown", ["live", "--config", "{config}"], 2,
     "[model] device: unknown device 'tpu'", '[model]\ndevice = "tpu"\n'),
    ("config-precision-the-backend-does-not-build", ["live", "--config", "{config}"], 2,
     "[model] precision: --backend onnx builds fp32 or int8",
     '[model]\nbackend = "onnx"\nprecision = "fp16"\n'),
    ("config-precision-no-backend-builds-here", ["live", "--config", "{config}"], 2,
     "no backend builds fp16 on cpu", '[model]\nprecision = "fp16"\n'),
    ("bench-precision-the-backend-does-not-build", ["bench", "--backend", "eager,onnx:fp16",
                                                    "--frames", "5"], 2,
     "fp16 is for tensorrt", None),
    ("build-engines-precision-unknown", ["build-engines", "--precision", "fp8"], 2,
     "unknown precision 'fp8'", None),
    # the model's input contract (streamav.model.inputs) against the front end, at start
    ("config-face-crop-not-the-models", ["live", "--config", "{config}"], 2,
     "the model reads 64 x 64 faces", "[face]\ncrop_size_px = 96\n"),
    ("config-n-fft-not-the-models", ["live", "--config", "{config}"], 2,
     "513-bin spectra", "[spectrum]\nn_fft = 2048\n"),
    ("config-ring-frames-absurd", ["live", "--config", "{config}"], 2,
     "[ring] video_capacity_frames", "[ring]\nvideo_capacity_frames = 1000000000\n"),
    ("config-ring-audio-absurd", ["live", "--config", "{config}"], 2, "[ring] audio_capacity_s",
     "[ring]\naudio_capacity_s = 1e9\n"),
    ("config-window-zero", ["live", "--config", "{config}"], 2, "[spectrum] window_samples",
     "[spectrum]\nwindow_samples = 0\n"),
    ("config-window-over-nfft", ["live", "--config", "{config}"], 2, "cannot exceed n_fft",
     "[spectrum]\nwindow_samples = 2048\n"),
    ("config-sample-rate", ["live", "--config", "{config}"], 2, "[spectrum] sample_rate_hz",
     "[spectrum]\nsample_rate_hz = 8000\n"),
    ("config-width-bool", ["live", "--config", "{config}"], 2, "[camera] width_px",
     "[camera]\nwidth_px = true\n"),
    ("config-stats-interval-zero", ["live", "--config", "{config}"], 2,
     "[run] stats_interval_s", "[run]\nstats_interval_s = 0\n"),
    ("config-face-lost-reset-zero", ["live", "--config", "{config}"], 2,
     "[run] face_lost_reset_s must be in 0.1..86400", "[run]\nface_lost_reset_s = 0\n"),
    ("config-face-lost-reset-nan", ["live", "--config", "{config}"], 2,
     "[run] face_lost_reset_s must be a finite number", "[run]\nface_lost_reset_s = nan\n"),
    ("config-face-border", ["live", "--config", "{config}"], 2, "[face] border",
     '[face]\nborder = "mirror"\n'),
    ("config-face-crop-small", ["live", "--config", "{config}"], 2, "crop_size_px",
     "[face]\ncrop_size_px = 4\n"),
    ("config-face-confidence", ["live", "--config", "{config}"], 2,
     "[face] min_detection_confidence must be in 0..1", "[face]\nmin_detection_confidence = 2\n"),
    ("config-face-confidence-nan", ["live", "--config", "{config}"], 2,
     "[face] min_tracking_confidence", "[face]\nmin_tracking_confidence = nan\n"),
    ("config-noise", ["live", "--config", "{config}"], 2, "[model] noise",
     '[model]\nnoise = "gaussian:5"\n'),
    ("config-stream-id-empty", ["live", "--config", "{config}"], 2, "[publish] stream_id is empty",
     '[publish]\nstream_id = ""\n'),
    ("config-engine-dir-unwritable", ["live", "--config", "{config}"], 2,
     "[model] engine_dir /proc/streamav-no-such-dir: cannot write",
     '[model]\nengine_dir = "/proc/streamav-no-such-dir"\n'),
    ("config-engine-dir-a-file", ["live", "--config", "{config}"], 2, "is not a directory",
     '[model]\nengine_dir = "/proc/version"\n'),
    ("config-stats-json-device", ["live", "--config", "{config}"], 2, "not a regular file",
     '[run]\nstats_json = "/dev/null"\n'),
    # -- more flag values (found by probing) ------------------------------------------------------
    ("noise-negative", ["live", "--video", "{clip}", "--noise", "gaussian:-1"], 2,
     "--noise: noise 'gaussian:-1'", None),
    ("noise-nan", ["live", "--video", "{clip}", "--noise", "gaussian:nan"], 2, "must be in",
     None),
    ("noise-jpeg-quality", ["live", "--video", "{clip}", "--noise", "jpeg:500"], 2, "0..100",
     None),
    ("noise-empty", ["live", "--video", "{clip}", "--noise", ""], 2, "--noise is empty", None),
    ("camera-empty", ["live", "--camera", "", "--no-audio"], 2, "--camera is empty", None),
    ("stream-id-empty", ["live", "--video", "{clip}", "--stream-id", " "], 2,
     "--stream-id is empty", None),
    ("stream-id-too-long", ["live", "--video", "{clip}", "--stream-id", "x" * 300], 2,
     "longer than 256", None),
    ("stats-json-device", ["live", "--video", "{clip}", "--stats-json", "/dev/full"], 2,
     "not a regular file", None),
    ("save-features-device", ["live", "--video", "{clip}", "--save-features", "/dev/null"], 2,
     "not a regular file", None),
    ("publish-all-interfaces-no-keys", ["live", "--video", "{clip}", "--publish",
                                        "tcp://0.0.0.0:5997"], 4, "needs CURVE keys", None),
    ("subscribe-junk-server-key", ["subscribe", "--server-key", "{file}", "--count", "1"], 4,
     "cannot read CURVE certificate", None),
    # -- output paths of the other commands, checked before their work -------------------------
    ("bench-json-unwritable", ["bench", "--json", "/proc/streamav-no-such-dir/b.json",
                               "--backend", "eager", "--frames", "5", "--warmup", "1"], 2,
     "--json /proc/streamav-no-such-dir/b.json: cannot write", None),
    ("bench-plot-is-a-directory", ["bench", "--plot", "{tmp}", "--frames", "5"], 2,
     "--plot", None),
    ("eval-json-unwritable", ["eval", "--model", "{tmp}/m", "--cache", "{tmp}/c", "--json",
                              "/proc/streamav-no-such-dir/r.json"], 2, "cannot write", None),
    ("eval-plots-under-a-file", ["eval", "--model", "{tmp}/m", "--cache", "{tmp}/c", "--plots",
                                 "{file}/plots"], 2, "is not a directory", None),
    ("build-engines-json-unwritable", ["build-engines", "--json",
                                       "/proc/streamav-no-such-dir/e.json"], 2, "cannot write",
     None),
    ("train-out-under-a-file", ["train", "mdvae", "--cache", "{tmp}/c", "--out", "{file}/m"], 2,
     "--out", None),
    ("corpus-index-json-unwritable", ["corpus", "index", "{tmp}", "--format", "crema-d",
                                      "--json", "/proc/streamav-no-such-dir/i.json"], 2,
     "cannot write", None),
    ("corpus-synth-intensities", ["corpus", "synth", "--out", "{tmp}/s", "--intensities", "a,b"],
     2, "--intensities", None),
    ("corpus-synth-out-under-a-file", ["corpus", "synth", "--out", "{file}/s"], 2,
     "is not a directory", None),
    ("calibrate-start-nan", ["calibrate", "--profile", "p1", "--label", "neutral", "--video",
                             "{clip}", "--start", "nan"], 2, "--start", None),
    ("calibrate-end-before-start", ["calibrate", "--profile", "p1", "--label", "neutral",
                                    "--video", "{clip}", "--start", "2", "--end", "1"], 2,
     "--end", None),
    # -- options another mode would ignore ---------------------------------------------------
    ("bench-serve-with-backend", ["bench", "--serve", "--backend", "onnx", "--threads", "2"], 2,
     "--backend, --threads: not for --serve", None),
    ("bench-replicas-without-serve", ["bench", "--replicas", "3"], 2,
     "--replicas goes with --serve", None),
    ("live-remote-with-model-options", ["live", "--video", "{clip}", "--remote",
                                        "tcp://127.0.0.1:5999", "--backend", "onnx",
                                        "--max-streams", "2"], 2,
     "--backend, --max-streams: not for --remote", None),
    ("calibrate-seconds-zero", ["calibrate", "--profile", "p1", "--camera", "0", "--seconds",
                                "0"], 2, "--seconds", None),
]


@pytest.fixture(scope="module")
def held_endpoint():
    """A loopback port bound (and listened on) by this module for all its tests."""
    port = free_tcp_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        yield f"tcp://127.0.0.1:{port}"


def _live_flags(argv: list[str], toml: str | None, endpoint: str) -> list[str]:
    """Headless, no control socket, the held publish port (unless the case sets its own)."""
    flags = ["--no-preview"]
    if "--control" not in argv:
        flags += ["--control", "none"]
    if "--publish" not in argv and "endpoint" not in (toml or ""):
        flags += ["--publish", endpoint]
    return flags


@pytest.mark.parametrize("case_id, argv, exit_code, phrase, toml", CASES,
                         ids=[case[0] for case in CASES])
def test_bad_input_is_one_error_line(case_id, argv, exit_code, phrase, toml, tmp_path,
                                     held_endpoint):
    if "{clip}" in " ".join(argv) and not CREMA_D_CLIPS:
        pytest.skip("the real clips are not in ../shared")
    work = tmp_path / "work"
    work.mkdir()
    regular_file = tmp_path / "file.mp4"
    regular_file.write_bytes(b"\x00not a video" * 100)
    config = tmp_path / "live.toml"
    if toml is not None:
        config.write_text(toml)
    values = {"{tmp}": str(work), "{file}": str(regular_file), "{clip}": CLIP,
              "{config}": str(config)}
    args = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace(key, value)
        args.append(arg)
    if args[:1] == ["live"]:
        args[1:1] = _live_flags(argv, toml, held_endpoint)  # before the case's own flags
    engines = tmp_path / "engines"
    engines.mkdir()
    env = cli_env()
    env["STREAMAV_ENGINE_DIR"] = str(engines)
    result = subprocess.run([*STREAMAV, *args], capture_output=True, text=True, timeout=60,
                            env=env, stdin=subprocess.DEVNULL, cwd=tmp_path)

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("streamav: error: "), result.stderr
    assert phrase in lines[0], lines[0]
    assert not any(engines.iterdir()), "an engine was built before the input was refused"
    assert list(work.iterdir()) == [], "an output was written for a refused run"


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


def test_a_good_run_is_not_refused_by_the_checks(tmp_path, endpoint):
    """The same checks let a good run through: outputs in a folder that does not exist yet."""
    if not CREMA_D_CLIPS:
        pytest.skip("the real clips are not in ../shared")
    stats = tmp_path / "new" / "folder" / "stats.json"
    result = subprocess.run(
        [*STREAMAV, "live", "--video", CLIP, "--no-preview", "--no-model", "--no-realtime",
         "--max-frames", "5", "--publish", endpoint, "--control", "none", "--stats-json",
         str(stats)], capture_output=True, text=True, timeout=120, env=cli_env(),
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert stats.is_file() and os.path.getsize(stats) > 0
    assert not Path(tmp_path, "new", "folder", "stats.json.partial").exists()


def test_an_output_that_fails_at_the_end_is_one_error_and_the_other_output_is_written(tmp_path):
    """A path can go bad during the run (a full disk, a folder removed): the run's other
    output is still written, and the failure is one InputError naming the flag."""
    from streamav.config import load_config
    from streamav.errors import InputError
    from streamav.live import _write_outputs
    from streamav.pipeline import RunSummary

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    stats = tmp_path / "stats.json"
    config = load_config(None, {"source.video": "clip.mp4", "run.stats_json": str(stats),
                                "run.save_features": str(blocker / "features.npz")})

    class Recorder:
        def features(self):
            return None  # never written: the folder cannot be made

    summary = RunSummary(final_stats={"frames": 3}, stop_reason="end of input")
    with pytest.raises(InputError, match="--save-features .*features.npz: "):
        _write_outputs(config, summary, Recorder())
    assert json.loads(stats.read_text())["stats"] == {"frames": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder", "stats.json"]
