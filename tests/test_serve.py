"""streamav on Ray Serve (#14): streamav.serve, `streamav live --remote`.

The acceptance run: a two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, CPU
only, 2 CPUs a node), the model deployment with 2 replicas (one a node), the ingress with its
PUB edge on 127.0.0.1, and one `streamav live --remote` process with 8 real clips (the demo
clip and 7 GRID clips, offline). Mid-run the replica serving one stream is killed. Then:

- every stream was served, on both nodes;
- each stream the kill did not touch has every frame's emotion, equal to the same clip run
  alone in one process (`streamav live` code, the shipped batch-1 step; a replica runs a
  tick of several rows on the batch-8 export: float32 rounding only), with no `seq` gap;
- each stream of the killed replica has one `status` `moved` (from the dead replica to the
  other, from its last snapshot, or afresh when it had none yet), its emotion equal to its
  run alone up to the move, and `seq` gaps that add up to the frames the status says were
  lost (at least one in all: the frames in flight on the dead replica);
- each stream's results go on to its clip's last frame.

The replica's own work (slots, batch, snapshot and restore, refusal) is checked without Ray
on the shipped model too.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamav.config import load_config
from streamav.data import demo_clip_path, default_model_folder
from streamav.engines.choice import EngineChoice
from streamav.frontend.face import mesh_in_crop
from streamav.live import build_pipeline
from streamav.serve.frames import FrameInputs, decode_frame, encode_frame
from streamav.wire.protocol import decode

from conftest import SHARED_DATA, RandomFrames, free_tcp_port, streamav_command

FRAMES = 30  # per clip
CAPACITY = 8  # slots per replica: the survivor takes the moved streams at once
TOL = 1e-4 + 1e-5  # batch-8 export vs the shipped batch-1 step, plus the wire's 5 decimals
GRID = sorted((SHARED_DATA / "grid").glob("*.mpg"))
CLIPS = [demo_clip_path(), *GRID[:7]]


def _build_engine(batch: int) -> None:
    from streamav.engines import EngineCache
    from streamav.engines.registry import build_or_load
    from streamav.model.io import load_model

    build_or_load(load_model(default_model_folder()), EngineChoice("onnx", "cpu", "fp32", batch),
                  EngineCache(), RandomFrames(), parity_frames=8)


def _alone(video: Path) -> list:
    """(frame seq, emotion probs, the frame's model inputs) of every stepped frame, run alone."""
    results = []
    config = load_config(None, {
        "source.video": str(video), "run.realtime": False, "run.preview": False,
        "run.max_frames": FRAMES, "publish.endpoint": f"tcp://127.0.0.1:{free_tcp_port()}",
        "publish.control_endpoint": "none", "model.backend": "onnx"})
    build_pipeline(config, on_frame=results.append).run()
    return [(r.frame.seq, np.array(r.model.emotion.probs),
             FrameInputs("x", r.frame.seq, r.frame.t_capture_ns, r.face.crop_rgb, r.spectrum,
                         mesh_in_crop(r.face)))
            for r in results if r.model is not None]


@pytest.fixture(scope="module")
def engine():
    """The batch-CAPACITY export the replicas step on (built once, short parity check)."""
    _build_engine(CAPACITY)


@pytest.fixture(scope="module")
def alone():
    assert len(GRID) >= 7, "the GRID clips of ../shared/data/grid"
    return {i: _alone(clip) for i, clip in enumerate(CLIPS)}


@pytest.mark.slow
def test_replica_core_batches_snapshots_restores_and_refuses(engine, alone):
    """Streams in one replica's batch equal their runs alone; one beyond its slots is refused;
    a stream restored from a snapshot on another replica goes on exactly as it would have."""
    from streamav.serve.replica import ReplicaCore, StepRequest

    a, b = alone[0], alone[1]
    n = min(len(a), len(b), 12)

    def core(name):
        return ReplicaCore(default_model_folder(), EngineChoice("onnx"), capacity=CAPACITY,
                           snapshot_every=4, name=name)

    one, two = core("one"), core("two")
    snapshot = None
    fillers = [StepRequest(f"f{k}", frame=_wire(b[0][2]), new=True)
               for k in range(CAPACITY - 2)]
    for i in range(n):
        requests = [StepRequest("a", frame=_wire(a[i][2]), new=i == 0),
                    StepRequest("b", frame=_wire(b[i][2]), new=i == 0)]
        if i == 0:
            requests += [*fillers, StepRequest("c", frame=_wire(b[0][2]), new=True)]
        replies = one.handle(requests)
        if i == 0:
            assert [r.outcome for r in replies[2:]] == ["ok"] * len(fillers) + ["refused"]
            assert f"{CAPACITY} stream slots" in replies[-1].reason
            for filler in fillers:
                assert one.handle([StepRequest(filler.stream, kind="leave")])[0].outcome == "done"
        for reply, expected in zip(replies, (a[i], b[i])):
            assert reply.outcome == "ok" and reply.frame_seq == expected[0]
            np.testing.assert_allclose(reply.emotion.probs, expected[1], atol=1e-4, rtol=0)
        if replies[0].snapshot is not None:
            snapshot = replies[0].snapshot
            at = i
    assert one.batches == n and one.frames == 2 * n + len(fillers)
    assert snapshot is not None and snapshot.frames == at + 1
    # stream a moves to replica two after its snapshot: unknown there until it brings it
    assert two.handle([StepRequest("a", frame=_wire(a[at + 1][2]))])[0].outcome == "unknown"
    reply = two.handle([StepRequest("a", frame=_wire(a[at + 1][2]), resume=snapshot)])[0]
    assert reply.outcome == "ok" and reply.joined
    np.testing.assert_allclose(reply.emotion.probs, a[at + 1][1], atol=1e-4, rtol=0)
    assert two.handle([StepRequest("a", kind="leave")])[0].outcome == "done"
    assert not two.streams and two.slots.streams == 0


def _wire(inputs: FrameInputs) -> FrameInputs:
    """The frame as the ingress receives it (encoded and decoded)."""
    return decode_frame(encode_frame(inputs, keep_all=True)[1:])[1]


class _Collector(threading.Thread):
    """Every message of the PUB edge; `kill` is set, with the replica to kill, once stream s0
    has had 8 emotion results (its replica named by its `served` status)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.messages = []
        self.done = threading.Event()
        self.kill = threading.Event()
        self.target: str | None = None

    def run(self) -> None:
        s0_results, s0_replica = 0, None
        while not self.done.is_set():
            if not self.sock.poll(100):
                continue
            m = decode(self.sock.recv_multipart())
            self.messages.append(m)
            if m.stream != "t.s0" or self.kill.is_set():
                continue
            if m.topic == "status" and m.body.state == "served":
                s0_replica = _served(m.body.reason)[0]
            elif m.topic == "emotion":
                s0_results += 1
                if s0_results == 8:
                    self.target = s0_replica
                    self.kill.set()
        self.sock.close(linger=0)

    def emotion_frames(self, stream: str) -> list[int]:
        return [m.body.frame_seq for m in list(self.messages)
                if m.stream == stream and m.topic == "emotion"]


def _served(reason: str) -> tuple[str, str]:
    """(replica, node) of a `served` status."""
    found = re.search(r" on (\S+) \(node (\w+)\)$", reason)
    assert found, reason
    return found.group(1), found.group(2)


def _ready_line(path: Path, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "streamav: serving" in path.read_text(errors="replace"):
            return
        assert process.poll() is None, path.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    raise AssertionError("streamav serve did not get ready: "
                         + path.read_text(errors="replace")[-3000:])


@pytest.mark.slow
def test_two_node_cluster_sticky_streams_survive_a_replica_kill(engine, alone, tmp_path):
    """`streamav serve --address` on a two-node cluster, `streamav live --remote` with 8 clips,
    a replica killed mid-run (see the module docstring)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # the head node and ray.init put their own SIGTERM / SIGINT handlers in place and leave
    # them: the test process's go back afterwards (test_stop_signals and
    # test_pipeline_shutdown check them)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    listen = f"tcp://127.0.0.1:{free_tcp_port()}"
    edge = f"tcp://127.0.0.1:{free_tcp_port()}"
    collector = _Collector(edge)
    log = tmp_path / "serve.log"
    summary_path = tmp_path / "serve.json"
    server = None
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        with open(log, "w") as log_file:
            server = subprocess.Popen(
                [*streamav_command(), "serve", "--address", cluster.address, "--replicas", "2",
                 "--max-replicas-per-node", "1", "--max-streams", str(CAPACITY),
                 "--snapshot-every", "5", "--listen", listen, "--publish", edge,
                 "--json", str(summary_path)], stdout=log_file, stderr=subprocess.STDOUT)
        _ready_line(log, server, 120)
        collector.start()
        time.sleep(0.5)  # the subscription reaches the edge
        client = subprocess.Popen(
            [*streamav_command(), "live", "--remote", listen, "--stream-id", "t",
             "--no-realtime", "--no-preview", "--max-frames", str(FRAMES),
             *[arg for clip in CLIPS for arg in ("--video", str(clip))]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert collector.kill.wait(120), "stream s0 never got 8 results"
        # from this process's driver
        ray.kill(ray.get_actor(collector.target, namespace="serve"), no_restart=True)
        out, err = client.communicate(timeout=180)
        assert client.returncode == 0, err
        deadline = time.monotonic() + 60  # the ingress steps what it has queued
        while (time.monotonic() < deadline and any(
                (collector.emotion_frames(f"t.s{i}") or [-1])[-1] != alone[i][-1][0]
                for i in range(len(CLIPS)))):
            time.sleep(0.2)
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, log.read_text(errors="replace")[-3000:]
        summary = json.loads(summary_path.read_text())
    finally:
        collector.done.set()
        if server is not None and server.poll() is None:
            server.kill()
        ray.shutdown()
        cluster.shutdown()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    target = collector.target
    streams = [f"t.s{i}" for i in range(len(CLIPS))]
    assert sorted(summary["streams"]) == streams and summary["stopped"] == "SIGTERM"
    by_stream: dict[str, list] = {s: [] for s in streams}  # emotion messages
    before_move: dict[str, int] = {}  # how many of them came before the stream's `moved`
    status: dict[str, list] = {s: [] for s in streams}
    for m in collector.messages:  # in the order published (one socket)
        if m.topic == "emotion":
            by_stream[m.stream].append(m)
        elif m.topic == "status":
            status[m.stream].append(m.body)
            if m.body.state == "moved":
                before_move[m.stream] = len(by_stream[m.stream])
    served_on = {s: next(_served(b.reason) for b in status[s] if b.state == "served")
                 for s in streams}
    assert len({replica for replica, _ in served_on.values()}) == 2  # both replicas
    assert len({node for _, node in served_on.values()}) == 2  # on both nodes
    moved = {s for s in streams if served_on[s][0] == target}
    assert "t.s0" in moved and len(moved) < len(streams)
    lost_total = 0
    for i, s in enumerate(streams):
        expected = alone[i]
        got = by_stream[s]
        seqs = [m.seq for m in got]
        assert seqs == sorted(set(seqs))
        gaps = seqs[-1] + 1 - len(seqs)
        moves = [b for b in status[s] if b.state == "moved"]
        if s not in moved:
            assert not moves and gaps == 0 and summary["streams"][s]["lost"] == 0
            _same(got, expected)
            continue
        assert len(moves) == 1, [b.reason for b in status[s]]
        reason = moves[0].reason
        assert f"from {target} to " in reason
        # s0 had 8 frames or more stepped at the kill: a snapshot (every 5); a stream behind
        # it may have had none yet
        assert ("snapshot of frame" in reason if s == "t.s0" else
                "snapshot of frame" in reason or "fresh state (no snapshot yet)" in reason), reason
        lost = int(re.search(r"(\d+) frames lost", reason).group(1))
        assert gaps == lost == summary["streams"][s]["lost"]
        lost_total += lost
        # up to the move, every frame and equal to the run alone; then the snapshot's state
        assert seqs[before_move[s] - 1] == before_move[s] - 1
        _same(got[:before_move[s]], expected)
        assert got[-1].body.frame_seq == expected[-1][0]  # it went on to the clip's end
    assert lost_total >= 1


def _same(got: list, expected: list) -> None:
    assert len(got) >= 1
    assert [m.body.frame_seq for m in got] == [e[0] for e in expected[:len(got)]]
    for m, e in zip(got, expected):
        np.testing.assert_allclose(m.body.probs, e[1], atol=TOL, rtol=0)


def test_serve_without_ray_says_how_to_install_it(tmp_path):
    """The default install has no Ray: `streamav serve` is one line and exit 5 (a missing
    optional dependency, as every extra)."""
    hide = tmp_path / "sitecustomize.py"
    hide.write_text("import sys\nsys.modules['ray'] = None\n")
    result = subprocess.run([*streamav_command(), "serve"], capture_output=True, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)},
                            timeout=60)
    assert result.returncode == 5
    assert result.stderr.strip().splitlines() == [
        "streamav: error: streamav serve needs Ray Serve: pip install 'streamav[serve]' "
        "(Ray Serve)"]


def test_triton_export_repository_carries_the_step_and_its_state(tmp_path):
    """`streamav export --triton`: the repository's files, and Triton's implicit-state loop
    played with ONNX Runtime over them (initial state from initial_state/, each output state
    fed back as the next input) gives the shipped step's outputs. Triton itself is not run."""
    import onnxruntime as ort

    from streamav.engines.backends.onnx_numpy import NumpyOnnxStep
    from streamav.engines.shipped import find_shipped_step

    result = subprocess.run([*streamav_command(), "export", "--triton", str(tmp_path / "repo"),
                             "--instances", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    model = tmp_path / "repo" / "streamav_step"
    config = (model / "config.pbtxt").read_text()
    states = re.findall(r'input_name: "(\w+)"\s+output_name: "(\w+)"', config)
    step = NumpyOnnxStep(find_shipped_step(default_model_folder())[0], threads=1)
    assert [i for i, _ in states] == list(step.input_names[2:])
    assert [o for _, o in states] == list(step.output_names[step.n_outputs:])
    assert 'platform: "onnxruntime_onnx"' in config and "count: 2 kind: KIND_GPU" in config
    session = ort.InferenceSession(str(model / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    state = {i: np.fromfile(model / "initial_state" / i, "<f4").reshape(shapes[i])
             for i, _ in states}
    reference = step.initial_state()
    rng = np.random.default_rng(0)
    for _ in range(3):
        spectrum = rng.random((1, 513), np.float32)
        face = rng.random((1, 3, 64, 64), np.float32) - 0.5
        outputs = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, {"spectrum": spectrum, "face": face, **state})))
        state = {i: outputs[o] for i, o in states}
        expected, reference = step.step(spectrum, face, reference)
        np.testing.assert_array_equal(outputs["emotion_probs"], expected["emotion_probs"])


@pytest.mark.parametrize("args, line", [
    (["bench", "--serve", "--streams", "0"], "--streams must be at least 1, got 0"),
    (["serve", "--replicas", "0"],
     "--replicas, --max-streams and --snapshot-every must be at least 1"),
    (["live", "--video", "x.mp4", "--remote-client-key", "k"],
     "--remote-server-key and --remote-client-key go with --remote"),
])
def test_serve_options_are_checked_before_ray_starts(args, line):
    result = subprocess.run([*streamav_command(), *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"streamav: error: {line}"


def test_ingress_over_curve_forwards_allowed_clients_only(tmp_path):
    """The ingress's ROUTER with CURVE keys: a client on the allow-list gets its messages onto
    the PUB edge (CURVE too), one that is not is refused in the handshake. No model is needed
    for forwarded messages: no Ray here."""
    from streamav.clock import now_ns, wall_anchor
    from streamav.serve.client import RemoteLink
    from streamav.serve.frames import encode_forward
    from streamav.serve.ingress import Ingress, IngressSettings
    from streamav.wire.keys import make_keys
    from streamav.wire.messages import Anchor, Status, encode_body
    from streamav.wire.subscriber import Subscriber

    keys = tmp_path / "keys"
    make_keys(keys, ["good", "listener"])
    make_keys(tmp_path / "other", ["bad"])
    listen = f"tcp://127.0.0.1:{free_tcp_port()}"
    edge = f"tcp://127.0.0.1:{free_tcp_port()}"
    ingress = Ingress(None, IngressSettings(listen=listen, publish=edge,
                                            curve_secret_key_file=keys / "server.key_secret"))
    ingress.start()
    links = []
    try:
        with Subscriber(edge, ("status",), curve_server_public_key_file=keys / "server.key",
                        curve_client_secret_key_file=keys / "listener.key_secret") as sub:
            time.sleep(0.5)
            for name, secret in (("bad", tmp_path / "other" / "bad.key_secret"),
                                 ("good", keys / "good.key_secret")):
                link = RemoteLink(listen, wait=False, server_key=keys / "server.key",
                                  client_key=secret)
                link.start()
                links.append(link)
                status = Status(state="started", reason=name, anchor=Anchor(**wall_anchor()))
                link.send(encode_forward(name, "status", now_ns(), encode_body(status), []))
            got = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not got:
                message = sub.recv(timeout_s=0.2)
                if message is not None:
                    got.append(message)
            time.sleep(0.5)
            while (message := sub.recv(timeout_s=0.1)) is not None:
                got.append(message)
    finally:
        for link in links:
            link.close()
        ingress.stop()
    assert [(m.stream, m.body.reason) for m in got] == [("good", "good")]
    assert ingress.messages_forwarded == 1


class _Edge:
    """The ingress's PUB edge, recorded (what the ingress publishes and skips)."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []
        self.skipped = 0

    def publish(self, message, t_capture_ns, buffers=(), stream=None) -> bool:
        if getattr(message, "state", None) is not None:
            self.statuses.append((stream, message.state))
        return True

    def skip(self, topic, stream, frames) -> None:
        self.skipped += frames


class _Replica:
    """A deployment handle over one replica's bookkeeping, as ReplicaCore answers (held
    streams, capacity, `done` for a leave of a stream it does not hold); `fail` makes a
    stream's next request fail after the replica took it."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self.held: set[str] = set()
        self.requests: list = []
        self.fail: set[str] = set()

    def options(self, **_kwargs):
        return self

    async def remote(self, request):
        from streamav.serve.replica import StepReply

        self.requests.append(request)
        reply = lambda outcome, **kw: StepReply(request.stream, outcome, replica="r", **kw)  # noqa: E731
        if request.kind == "leave":
            self.held.discard(request.stream)
            return reply("done")
        joined = request.stream not in self.held
        if joined:
            if not request.new and request.resume is None:
                return reply("unknown")
            if len(self.held) >= self.capacity:
                return reply("refused", reason="no free slot")
            self.held.add(request.stream)
        if request.stream in self.fail:
            self.fail.discard(request.stream)
            raise ValueError("the batch failed")
        return reply("done" if request.kind == "reset" else "nonfinite", joined=joined)


def _ingress_with(replica):
    from streamav.serve.ingress import Ingress, _Route

    ingress = Ingress(replica, publisher=_Edge())

    def route(stream):
        r = _Route(stream, b"id")
        r.handle = replica
        ingress.routes[stream] = r
        return r
    return ingress, route


def _frame(stream: str, seq: int):
    from streamav.serve.ingress import _Item

    return _Item("frame", FrameInputs(stream, seq, 0, np.zeros((64, 64, 3), np.uint8), None,
                                      np.zeros((468, 2), np.float32)))


def test_ingress_frees_the_slot_of_a_stream_whose_first_reply_was_lost():
    """A stream's first request fails after its replica took it: the next reply makes it
    joined (`served`), and its leave frees the slot; a refused stream is released too."""
    import asyncio

    from streamav.serve.ingress import _Item

    replica = _Replica(capacity=1)
    ingress, route = _ingress_with(replica)
    a = route("a")
    replica.fail.add("a")

    async def run():
        await ingress._send(a, _frame("a", 0))  # lost (the request failed)
        await ingress._send(a, _frame("a", 1))
        assert a.joined and ("a", "served") in ingress.publisher.statuses
        b = route("b")
        await ingress._send(b, _frame("b", 0))  # refused: no slot
        assert b.refused and replica.requests[-1].kind == "leave"  # unassigned at the router
        a.queue.append(_Item("leave"))
        a.wake.set()
        await ingress._drive(a)

    asyncio.run(run())
    assert replica.held == set() and a.lost == 1
    assert "a" not in ingress.routes and ingress.summary()["streams"]["a"]["lost"] == 1


def test_ingress_reset_drops_the_snapshot_and_a_moved_stream_sees_its_leave():
    """After a reset a moved stream starts afresh (not from the last person's snapshot); a
    moved stream that finds no room leaves its retries when its leave is queued."""
    import asyncio

    from streamav.serve.ingress import _Item
    from streamav.serve.replica import StreamSnapshot

    replica = _Replica(capacity=1)
    ingress, route = _ingress_with(replica)
    a = route("a")
    a.snapshot = StreamSnapshot(3, 4, (), None, None)
    a.moving, a.moved_from = "replica x failed", "x"
    a.queue.extend([_Item("reset"), _Item("leave")])

    async def run():
        await asyncio.wait_for(ingress._drive(a), 5)
        b = route("b")
        b.moving = "replica x failed"
        replica.held.add("other")  # no room anywhere
        b.queue.extend([_frame("b", 1), _frame("b", 2), _Item("leave")])
        await asyncio.wait_for(ingress._drive(b), 5)
        return b

    b = asyncio.run(run())
    reset = next(r for r in replica.requests if r.kind == "reset")
    assert reset.resume is None and reset.new
    assert b.lost == 2 and replica.requests[-1].kind == "leave"
    assert not ingress.routes and set(ingress.summary()["streams"]) == {"a", "b"}


def test_a_bad_request_fails_its_own_stream_only():
    """A frame request without a frame, or with a mesh of the wrong size, is answered `error`;
    the stream batched with them is stepped as usual. The wire refuses the wrong mesh too."""
    from streamav.errors import InputError
    from streamav.serve.replica import ReplicaCore, StepRequest

    rng = np.random.default_rng(0)
    good = FrameInputs("a", 0, 0, rng.integers(0, 255, (64, 64, 3), np.uint8),
                       rng.random(513, np.float32), rng.random((468, 2), np.float32) * 64)
    bad_mesh = FrameInputs("b", 0, 0, good.crop_rgb, None, np.zeros((10, 2), np.float32))
    with pytest.raises(InputError):
        decode_frame(encode_frame(bad_mesh, keep_all=True)[1:])
    core = ReplicaCore(default_model_folder(), EngineChoice("onnx"), capacity=1, name="one")
    replies = core.handle([StepRequest("a", frame=good, new=True),
                           StepRequest("b", frame=bad_mesh, new=True),
                           StepRequest("c", new=True)])
    assert [r.outcome for r in replies] == ["ok", "error", "error"]
    assert "mesh" in replies[1].reason and "without a frame" in replies[2].reason
    assert sorted(core.streams) == ["a"] and replies[0].emotion is not None


def test_ingress_stop_after_its_loop_died_still_stops_the_edge():
    """An ingress whose loop thread has ended (here: it failed on its first wake) is not
    `alive`, and stop() still stops its PUB edge instead of raising on the closed loop."""
    from streamav.serve.ingress import Ingress, IngressSettings

    ingress = Ingress(None, IngressSettings(listen=f"tcp://127.0.0.1:{free_tcp_port()}",
                                            publish=f"tcp://127.0.0.1:{free_tcp_port()}",
                                            idle_leave_s=0.0))

    def broken():
        raise RuntimeError("the loop failed")
    ingress._leave_idle = broken  # fails at its first idle check, ~1 s after start
    ingress.start()
    assert ingress.alive
    ingress._thread.join(10)
    assert not ingress.alive
    ingress.stop()
    assert not ingress.publisher._thread.is_alive()  # the edge's socket is closed


def test_a_snapshot_restored_on_another_replica_goes_on_as_it_would_have():
    """ReplicaCore on the shipped batch-1 step: a stream resumed on a second replica from its
    snapshot (the slot's state rows through SlotRunner.slot_state / set_slot_state, the
    stage's emotion and detector state through ModelStage.snapshot_state / restore_state)
    steps its next frames as the first replica does."""
    from streamav.serve.replica import ReplicaCore, StepRequest

    rng = np.random.default_rng(1)
    frames = [_wire(FrameInputs("a", seq, 0, rng.integers(0, 255, (64, 64, 3), np.uint8),
                                rng.random(513, np.float32),
                                rng.random((468, 2), np.float32) * 64, fps=25.0))
              for seq in range(5)]
    one, two = (ReplicaCore(default_model_folder(), EngineChoice("onnx"), capacity=1,
                            snapshot_every=3, name=name) for name in ("one", "two"))
    replies = [one.handle([StepRequest("a", frame=f, new=f.seq == 0)])[0] for f in frames]
    snapshot = replies[2].snapshot
    assert snapshot is not None and snapshot.frames == 3 and snapshot.emotion is not None
    moved = [two.handle([StepRequest("a", frame=f, resume=snapshot if f.seq == 3 else None)])[0]
             for f in frames[3:]]
    assert moved[0].joined
    assert one.streams["a"].stage.fps == two.streams["a"].stage.fps == 25.0  # the stream's rate
    for got, expected in zip(moved, replies[3:]):
        assert got.outcome == expected.outcome == "ok"
        assert got.emotion == expected.emotion and got.latent == expected.latent
    with pytest.raises(ValueError, match="state row of shape"):
        two.slots.runner.set_slot_state(0, tuple(a[:, :1] for a in snapshot.slot_state))


def test_the_client_link_never_blocks_for_ever_on_a_missing_ingress(monkeypatch):
    """No ingress at the endpoint, the socket's queue full: a command waits its bounded time
    and is dropped (counted); an offline frame waits, but close() from another thread ends
    its wait."""
    from streamav.serve import client
    from streamav.serve.client import RemoteLink
    from streamav.serve.frames import encode_command

    monkeypatch.setattr(client, "_CLOSE_LINGER_MS", 0)  # nothing queued here will ever go
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    realtime = RemoteLink(endpoint, wait=False)
    realtime.start()
    while realtime.send(encode_command("s", "reset")):  # real time: until the queue is full
        pass
    t0 = time.monotonic()
    assert realtime.send_command(encode_command("s", "leave")) is False
    assert time.monotonic() - t0 < 5 and realtime.dropped == 2
    realtime.close()
    offline = RemoteLink(endpoint, wait=True)
    offline.start()
    result = []

    def fill():
        for _ in range(5000):
            if not offline.send(encode_command("s", "reset")):
                result.append(False)
                return
    sender = threading.Thread(target=fill)
    sender.start()
    sender.join(1.5)
    assert sender.is_alive()  # an offline frame waits for the ingress
    offline.close()
    sender.join(5)
    assert not sender.is_alive() and result == [False]
