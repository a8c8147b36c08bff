"""Many streams in one process (#13 item 1): streamav.multi_live and streamav.stream_slots.

The real pipeline on real clips (the demo clip and a CREMA-D clip, offline), the shipped model
on ONNX Runtime (the many-stream run on its batch-2 export, the single-stream runs on the
shipped batch-1 step.onnx), the publisher on 127.0.0.1 with a real subscriber. One many-stream
run covers state isolation, join and leave, slot reuse and admission refusal:

- stream a (demo clip) runs from the start to its end;
- stream b (CREMA-D clip) joins after a's 4th frame and leaves after its own last frame;
- stream d asks to join while a and b hold both slots: refused, with a `status`;
- stream c (the same CREMA-D frames as b) joins once b has left, in b's freed slot.

Each stream's outputs equal the same stream run alone with the single-stream code.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamav.config import load_config
from streamav.data import demo_clip_path, default_model_folder
from streamav.engines.choice import EngineChoice
from streamav.live import build_pipeline
from streamav.multi_live import MultiRun, StreamInput, parse_stream_list, stream_inputs

from conftest import CREMA_D_CLIPS, RandomFrames, drain, free_tcp_port

N_A, N_B = 14, 6
TIGHT = 1e-4  # batch-2 export vs the shipped batch-1 step: float32 rounding only


@pytest.fixture(scope="module")
def slots():
    """Two stream slots on the shipped model's ONNX export for batch 2 (built once, with a
    short parity check)."""
    from streamav.engines import EngineCache
    from streamav.engines.registry import build_or_load
    from streamav.model.io import load_model
    from streamav.model_runner import open_slots

    choice = EngineChoice("onnx", "cpu", "fp32", 2)
    build_or_load(load_model(default_model_folder()), choice, EngineCache(), RandomFrames(),
                  parity_frames=8)
    return open_slots(default_model_folder(), EngineChoice("onnx"), 2)


def _config(video, max_frames, port):
    return load_config(None, {
        "source.video": str(video), "run.realtime": False, "run.preview": False,
        "run.max_frames": max_frames, "publish.endpoint": f"tcp://127.0.0.1:{port}",
        "publish.control_endpoint": "none", "model.backend": "onnx", "run.max_streams": 2})


def _outputs(results):
    """(frame seq, w, emotion probs) of every stepped frame."""
    return [(r.frame.seq, np.array(r.model.latent.w), np.array(r.model.emotion.probs))
            for r in results if r.model is not None]


def _alone(video, max_frames):
    results = []
    pipeline = build_pipeline(_config(video, max_frames, free_tcp_port()),
                              on_frame=results.append)
    pipeline.run()
    assert pipeline.model.engine_label == "onnx/cpu/fp32/b1"
    return _outputs(results)


def _same(multi, alone):
    assert len(multi) == len(alone) > 0
    for (seq_m, w_m, p_m), (seq_a, w_a, p_a) in zip(multi, alone):
        assert seq_m == seq_a
        np.testing.assert_allclose(w_m, w_a, atol=TIGHT, rtol=0)
        np.testing.assert_allclose(p_m, p_a, atol=TIGHT, rtol=0)


def test_streams_join_leave_are_refused_and_match_their_runs_alone(slots):
    import zmq

    port = free_tcp_port()
    crema = CREMA_D_CLIPS[0]
    config = _config(demo_clip_path(), N_A, port)
    got: dict[str, list] = {"a": [], "b": [], "c": []}
    a_frames, b_added = threading.Event(), threading.Event()

    def on_frame(stream_id, result):
        got[stream_id].append(result)
        if stream_id == "a" and len(got["a"]) == 4:
            a_frames.set()
            assert b_added.wait(60)  # a holds its slot while b joins and d is refused

    context = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    run = MultiRun(config, on_frame=on_frame, slots=slots)
    try:
        run.start()
        time.sleep(0.3)  # the subscription reaches the publisher
        assert run.add(StreamInput("a", video=str(demo_clip_path()))) is not None
        assert a_frames.wait(60)
        assert run.add(StreamInput("b", video=str(crema), max_frames=N_B)) is not None
        assert run.add(StreamInput("d", video=str(crema))) is None  # both slots taken
        b_added.set()
        deadline = time.monotonic() + 60
        while slots.streams == 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # b leaves after its last frame
        assert run.add(StreamInput("c", video=str(crema), max_frames=N_B)) is not None
        summaries = run.wait()
    finally:
        run.close()
    messages = drain(sub)

    assert run.refused == ["d"] and not run.errors
    assert {sid: s.final_stats["frames"] for sid, s in summaries.items()} == {
        "a": N_A, "b": N_B, "c": N_B}
    assert slots.streams == 0  # every slot freed
    assert slots.rows_stepped > slots.ticks  # some ticks stepped two streams in one call
    # a's ticks alone (before b joins) ran on the shipped batch-1 step, not a padded batch 2
    assert sorted(slots.engines) == [1, 2]
    assert slots.calls_per_batch[1] >= 4 and slots.calls_per_batch[2] > 0
    refused = [m for m in messages if m.topic == "status" and m.body.state == "refused"]
    assert [m.stream for m in refused] == ["d"] and "2 stream slots" in refused[0].body.reason
    by_stream = {}
    for m in messages:
        if m.topic == "emotion":
            by_stream.setdefault(m.stream, []).append(m.body.frame_seq)
    assert sorted(by_stream) == ["a", "b", "c"] and len(by_stream["b"]) == N_B

    a_alone, b_alone = _alone(demo_clip_path(), N_A), _alone(crema, N_B)
    _same(_outputs(got["a"]), a_alone)
    _same(_outputs(got["b"]), b_alone)
    _same(_outputs(got["c"]), b_alone)  # b's freed slot, fresh for c


def test_stream_lists(tmp_path):
    listing = tmp_path / "streams.txt"
    listing.write_text("# two streams\nfront=camera:0\n/data/talk.mp4  # unnamed\n")
    assert parse_stream_list(listing) == [StreamInput("front", camera="0"),
                                          StreamInput("s1", video="/data/talk.mp4")]
    assert [s.stream_id for s in stream_inputs(["x.mp4", "y.mp4"], ["1"])] == ["s0", "s1", "s2"]
    with pytest.raises(Exception, match="twice"):
        stream_inputs(["x.mp4"], [], _write(tmp_path / "dup.txt", "cam=y.mp4\ncam=z.mp4\n"))


def _write(path, text):
    path.write_text(text)
    return path


class _GatedEngine:
    """A BatchEngine whose step waits for `gate` (a tick held running while streams join)."""

    label = "gated"
    labels = ("y",)

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.gate = threading.Event()
        self.entered = threading.Event()

    def initial_state(self):
        return (np.zeros((self.batch, 2), np.float32),)

    def run(self, spectrum, face, state):
        self.entered.set()
        assert self.gate.wait(10)
        return {"y": spectrum[:, :1].copy()}, (state[0] + 1,)


def test_joins_during_a_running_tick_take_distinct_slots():
    """Two streams joining while a tick runs (the join waits for it, releasing the lock) must
    not both take the same free slot."""
    from streamav.stream_slots import SlotRunner

    engine = _GatedEngine(3)
    runner = SlotRunner(engine, capacity=3, gather_s=0.0)
    first = runner.join()
    stepper = threading.Thread(target=first.step, args=(
        np.zeros((1, 513), np.float32), np.zeros((1, 3, 64, 64), np.float32)))
    stepper.start()
    assert engine.entered.wait(10)
    handles = []
    joiners = [threading.Thread(target=lambda: handles.append(runner.join())) for _ in range(2)]
    for t in joiners:
        t.start()
    time.sleep(0.2)  # both joins wait for the tick
    engine.gate.set()
    for t in (stepper, *joiners):
        t.join(10)
    assert sorted(h.slot for h in handles) == [1, 2]
    assert runner.streams == 3


def test_a_streams_send_latency_hook_is_installed_over_a_forwarding_publisher():
    """`live --remote`: each stream's LivePipeline sees its messages' send latencies through
    StreamPublisher over the client's ForwardingPublisher (a real DEALER to a ROUTER here)."""
    import zmq

    from streamav.clock import now_ns, wall_anchor
    from streamav.multi_live import StreamPublisher
    from streamav.pipeline import LivePipeline
    from streamav.serve.client import ForwardingPublisher, RemoteLink
    from streamav.sources.synthetic import SyntheticConfig, SyntheticSource
    from streamav.wire.messages import Anchor, Status

    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    shared = ForwardingPublisher(RemoteLink(endpoint, wait=False), "client")
    config = load_config(None, {"source.video": "synthetic", "source.no_audio": True,
                                "run.preview": False, "model.enabled": False,
                                "publish.control_endpoint": "none"})
    source = SyntheticSource(SyntheticConfig(duration_s=1.0, audio=False), realtime=False)
    pipeline = LivePipeline(config, [source], None, StreamPublisher(shared, "client.s0"))
    shared.start()
    try:
        status = Status(state="started", reason="test", anchor=Anchor(**wall_anchor()))
        assert pipeline.publisher.publish(status, now_ns())
        assert router.poll(5000)
        assert pipeline.stats.latency.total["publish"].count == 1
        StreamPublisher(shared, "client.s1").publish(status, now_ns())  # another stream's
        assert pipeline.stats.latency.total["publish"].count == 1
    finally:
        shared.stop()
        router.close()
        context.term()
