"""`streamav bench`: the step benchmark of eager and ONNX Runtime on a tiny model (its JSON, the
plot, the engine cache reused), the live-path benchmark on the demo clip, and one clear line
and exit code for each bad option.

The runs go through `streamav.cli.main` in this process (the console script's own code, exit
codes included) to spare a PyTorch import per run on the shared CPU; one error runs the
installed command in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env, streamav_command, tiny_config

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

FRAMES, WARMUP = 40, 5
STAGES = ("decode", "queue", "face", "spectrum", "model", "publish", "capture_to_publish",
          "capture_to_emotion")


def invoke(*args: str) -> int:
    """`streamav ARGS` in this process; its exit code. PyTorch's thread count is restored."""
    from streamav.cli import main

    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = ["streamav", *args]
    try:
        main()
    except SystemExit as done:
        return 0 if done.code is None else int(done.code)
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    return 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from streamav.model.io import save_model
    from streamav.model.streaming import StreamingModel

    torch.manual_seed(0)
    return save_model(StreamingModel(tiny_config()).eval(),
                      tmp_path_factory.mktemp("bench") / "tiny")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def step_run(tiny_model, engine_dir, tmp_path_factory):
    """One benchmark with `--backend auto` (→ onnx, built here; eager added): the JSON and
    the plot."""
    out = tmp_path_factory.mktemp("step")
    code = invoke("bench", "--model", str(tiny_model), "--engine-dir", str(engine_dir),
                  "--backend", "auto", "--frames", str(FRAMES), "--warmup", str(WARMUP),
                  "--threads", "1", "--json", str(out / "bench.json"),
                  "--plot", str(out / "latency.png"))
    assert code == 0
    return json.loads((out / "bench.json").read_text()), out / "latency.png"


def test_step_benchmark_json(step_run, tiny_model):
    doc, _ = step_run
    assert doc["schema"] == "streamav-bench/1" and doc["kind"] == "step"
    assert doc["created"].endswith("Z") and isinstance(doc["command"], list)
    machine = doc["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["os"] and machine["python"]
    assert machine["memory_gb"] > 0
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    versions = doc["versions"]
    for name in ("streamav", "torch", "onnxruntime", "onnx", "numpy"):
        assert versions[name], name
    assert "torch_tensorrt" in versions
    assert doc["gpu"] is None or doc["gpu"]["name"]
    model = doc["model"]
    assert model["folder"] == str(tiny_model) and model["preset"] == "tiny-test"
    assert len(model["weights_sha256"]) == 64 and model["params"] > 0
    for key, value in (("device", "cpu"), ("batch", 1), ("frames", FRAMES),
                       ("warmup", WARMUP), ("threads", 1)):
        assert doc["settings"][key] == value, key

    backends = doc["backends"]
    assert [b["backend"] for b in backends] == ["eager", "onnx"]  # eager added, auto → onnx
    assert "reference" in backends[0]["why"] and backends[1]["why"].startswith("auto")
    assert backends[1]["cold_start"]["cache"] == "built"  # a fresh engine dir
    assert backends[1]["engine"]["threads"] == 1
    for b in backends:
        assert b["spec"] == {"backend": b["backend"], "device": "cpu", "precision": "fp32",
                             "batch": 1, "label": f"{b['backend']}/cpu/fp32/b1"}
        cold = b["cold_start"]
        assert cold["load_s"] >= 0 and cold["first_step_ms"] > 0
        lat = b["latency_ms"]
        assert lat["steps"] == b["frames"] == FRAMES
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] \
            <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert 0 <= b["over_budget_frames"] <= FRAMES
        tp = b["throughput"]
        assert math.isclose(tp["steps_per_s"], 1000 / lat["mean"], rel_tol=1e-2)
        assert math.isclose(tp["streams_at_30fps_mean"], tp["steps_per_s"] / 30, rel_tol=1e-2)
        assert tp["streams_at_30fps_p99"] == math.floor(1000 / 30 / lat["p99"])
        assert b["speedup_vs_eager"]["p50"] > 0 and b["speedup_vs_eager"]["mean"] > 0
        assert b["nonfinite_steps"] == 0
    assert backends[0]["speedup_vs_eager"] == {"p50": 1.0, "mean": 1.0}
    assert math.isclose(backends[1]["speedup_vs_eager"]["p50"],
                        backends[0]["latency_ms"]["p50"] / backends[1]["latency_ms"]["p50"],
                        rel_tol=1e-3)
    # Same inputs, each backend its own state: ONNX Runtime computes what eager does.
    assert backends[1]["max_abs_probs_vs_eager"] < 1e-4


def test_plot_is_a_png(step_run):
    _, png = step_run
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_second_run_loads_the_cached_engine(step_run, tiny_model, engine_dir, tmp_path):
    out = tmp_path / "again.json"
    assert invoke("bench", "--model", str(tiny_model), "--engine-dir", str(engine_dir),
                  "--backend", "onnx", "--frames", "3", "--warmup", "0", "--threads", "1",
                  "--json", str(out)) == 0
    doc = json.loads(out.read_text())
    assert [b["backend"] for b in doc["backends"]] == ["eager", "onnx"]
    assert doc["backends"][1]["cold_start"]["cache"] == "loaded"
    assert all(b["latency_ms"]["steps"] == 3 for b in doc["backends"])


def test_pipeline_benchmark_on_the_demo_clip(step_run, tiny_model, engine_dir, tmp_path):
    import av

    from streamav.data import demo_clip_path

    with av.open(str(demo_clip_path())) as container:
        clip_frames = sum(1 for _ in container.decode(video=0))
    out = tmp_path / "pipeline.json"
    assert invoke("bench", "--pipeline", "--demo", "--model", str(tiny_model),
                  "--engine-dir", str(engine_dir), "--backend", "onnx", "--no-realtime",
                  "--json", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "streamav-bench/1" and doc["kind"] == "pipeline"
    assert doc["model"]["preset"] == "tiny-test" and doc["machine"]["cores"] >= 1
    (backend,) = doc["backends"]
    assert backend["backend"] == "onnx" and backend["engine"] == "onnx/cpu/fp32/b1"
    assert list(backend["modes"]) == ["offline"]
    offline = backend["modes"]["offline"]
    assert offline["frames"] == clip_frames and offline["dropped_frames"] == 0
    assert offline["fps"] > 0 and offline["faces_found"] > 0.9 * clip_frames
    assert tuple(offline["latency_ms"]) == STAGES
    for stage, lat in offline["latency_ms"].items():
        assert lat["count"] > 0, stage
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] * 1.01, stage
    assert offline["latency_ms"]["model"]["count"] == offline["faces_found"]
    assert offline["latency_ms"]["capture_to_publish"]["count"] == clip_frames
    assert offline["latency_ms"]["capture_to_emotion"]["count"] == offline["faces_found"]


def test_pipeline_streams_runs_n_streams_in_one_process(tiny_model, engine_dir, tmp_path):
    """--pipeline --streams 2: two streams of the demo clip in real time through the
    many-stream worker, one batch-2 engine, each stream's own latencies and drops."""
    out = tmp_path / "streams.json"
    assert invoke("bench", "--pipeline", "--streams", "2", "--seconds", "2", "--model",
                  str(tiny_model), "--engine-dir", str(engine_dir), "--backend", "onnx",
                  "--json", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "streams" and doc["settings"]["asked_streams"] == 2
    (run,) = doc["runs"]
    assert run["streams"] == 2 and run["engine"] == "onnx/cpu/fp32/b2"
    assert [s["id"] for s in run["per_stream"]] == ["s0", "s1"]
    for stream in run["per_stream"]:
        assert stream["frames"] > 10 and stream["fps"] > 0 and stream["source_fps"] > 29
        assert stream["dropped_frames"] >= 0 and stream["stop_reason"] == "duration reached"
        for stage in ("capture_to_publish_ms", "capture_to_emotion_ms"):
            p = stream[stage]  # the stream's own messages, timed as they left the socket
            assert 0 < p["p50"] <= p["p99"], (stream["id"], stage)
    total = sum(s["frames"] for s in run["per_stream"])
    assert sum(run["engine_calls_per_batch"].values()) >= run["ticks"] > 0
    assert set(run["engine_calls_per_batch"]) <= {"1", "2"}
    assert run["capture_to_publish_ms"]["count"] == total
    assert run["process_cpu"]["cpu_ms_per_frame"] > 0 and run["process_cpu"]["frames"] > 0
    assert isinstance(run["holds"], bool) and (run["holds"] or run["why_not"])
    assert doc["largest_holding"] == (2 if run["holds"] else 0)
    assert len(doc["machine"]["load_average_start"]) == 3


def test_streams_auto_doubles_then_bisects():
    from streamav.bench.streams import StreamsSettings, search

    asked = []

    def probe(n):
        asked.append(n)
        return {"holds": n <= 5}

    largest, runs = search(StreamsSettings(clips=(), streams=None, limit=64), probe)
    assert largest == 5 and asked == [1, 2, 4, 8, 6, 5] and len(runs) == 6
    asked.clear()
    assert search(StreamsSettings(clips=(), streams=None, limit=3), probe)[0] == 3
    assert asked == [1, 2, 3]


def test_unknown_backend_is_exit_2_naming_the_valid_ones():
    result = subprocess.run([*streamav_command(), "bench", "--backend", "eager,fast"],
                            capture_output=True, text=True, env=cli_env(), timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "unknown backend 'fast'" in result.stderr
    for name in ("eager", "onnx", "compile", "tensorrt", "auto"):
        assert name in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_cuda_without_a_gpu_is_exit_3(capsys, tiny_model):
    assert invoke("bench", "--model", str(tiny_model), "--device", "cuda") == 3
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None,
                    reason="torch-tensorrt is installed")
def test_tensorrt_without_torch_tensorrt_is_exit_5_with_the_install_hint(capsys, tiny_model):
    assert invoke("bench", "--model", str(tiny_model), "--backend", "eager,tensorrt") == 5
    err = capsys.readouterr().err
    assert "torch-tensorrt" in err and "pip install 'streamav[tensorrt]'" in err


@pytest.mark.parametrize("args, message", [
    (("--frames", "0"), "--frames must be at least 1"),
    (("--warmup", "-1"), "--warmup must be 0 or more"),
    (("--batch", "0"), "--batch must be at least 1"),
    (("--backend", " , "), "--backend is empty"),
    (("--device", "tpu"), "unknown device 'tpu'"),
    (("--pipeline", "--plot", "x.png"), "--plot draws the step benchmark"),
    (("--pipeline", "--video", "/nonexistent/clip.mp4"), "no such file or folder"),
    (("--repeat", "2"), "are for --pipeline"),
    (("--streams", "2"), "--streams and --seconds are for --pipeline"),
    (("--pipeline", "--streams", "0"), "--streams must be at least 1"),
    (("--pipeline", "--streams", "many"), "a number of streams or 'auto'"),
    (("--pipeline", "--streams", "2", "--no-realtime"), "runs in real time"),
    (("--pipeline", "--streams", "2", "--seconds", "0"), "--seconds must be more than 0"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_options_are_exit_2(capsys, tiny_model, args, message):
    assert invoke("bench", "--model", str(tiny_model), *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamav: error: ") and message in err


def test_gpu_step_script_runs_every_batch_size_from_saved_inputs(tiny_model, tmp_path):
    """scripts/bench_gpu_step.py (run on a GPU lease with --device cuda) on the CPU: one
    `streamav bench` step run per batch size, from an .npz of model inputs, all in one JSON."""
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, spectra=rng.random((20, 513), dtype=np.float32),
             faces=rng.random((20, 3, 64, 64), dtype=np.float32))
    out = tmp_path / "gpu.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu_step.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--backends", "eager",
                           "--batches", "1,3", "--frames", "6", "--warmup", "1",
                           "--model", str(tiny_model), "--inputs", str(inputs),
                           "--json", str(out)],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(out.read_text())
    assert [run["settings"]["batch"] for run in document["runs"]] == [1, 3]
    for run in document["runs"]:
        assert run["settings"]["inputs"]["source"] == str(inputs)
        (eager,) = run["backends"]
        assert eager["frames"] == 6 and eager["latency_ms"]["p50"] > 0
        assert eager["nonfinite_steps"] == 0
    assert "step latency ms, cpu, batch 3" in done.stdout
