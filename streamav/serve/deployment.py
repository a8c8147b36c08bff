"""The model deployment of `streamav serve`: Ray Serve replicas around `ReplicaCore`.

Each replica holds `capacity` stream slots on the engine built for that batch; `@serve.batch`
collects the concurrent requests of its streams (one in flight per stream: the ingress sends
a stream's next frame once the last one is answered) and the batch is one engine tick
(streamav.serve.replica). Requests reach the replica that holds their stream's state through
`StreamStickyRouter` (streamav.serve.router), keyed by the stream id as the session id.

    app = model_app(ModelSettings(...))     # a bound deployment, for serve.run
    handle = serve.run(app, name="streamav", route_prefix=None)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from streamav.engines.choice import EngineChoice
from streamav.serve.replica import ReplicaCore, StepReply, StepRequest
from streamav.serve.router import ROUTER_CLASS

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "StreamModel"


@dataclass(frozen=True)
class ModelSettings:
    """What every replica is built with (plain values: they travel to the replicas)."""

    folder: str
    backend: str = "onnx"
    device: str = "cpu"
    capacity: int = 8  # stream slots per replica (the engine's static batch)
    snapshot_every: int = 30  # frames between two snapshots of a stream's state
    threads: int = 1  # the step's intra-op threads
    engine_dir: str | None = None
    batch_wait_s: float = 0.002  # how long a batch waits for more requests (serve.batch)


@dataclass(frozen=True)
class Placement:
    """How Serve places the replicas."""

    replicas: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_replicas_per_node: int | None = None


@serve.deployment(name=DEPLOYMENT_NAME)
class StreamModel:
    """One model replica; see the module docstring."""

    def __init__(self, settings: dict) -> None:
        s = ModelSettings(**settings)
        self.name = ray.get_runtime_context().get_actor_name() or "replica"
        self.node_id = ray.get_runtime_context().get_node_id()
        self.core = ReplicaCore(
            Path(s.folder), EngineChoice(s.backend, s.device), capacity=s.capacity,
            snapshot_every=s.snapshot_every, threads=s.threads,
            engine_dir=Path(s.engine_dir) if s.engine_dir else None, name=self.name,
            node=self.node_id)
        self.step.set_max_batch_size(s.capacity)
        self.step.set_batch_wait_timeout_s(s.batch_wait_s)
        log.info("replica %s on node %s: %d slots on %s", self.name, self.node_id,
                 s.capacity, self.core.label)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def step(self, requests: list[StepRequest]) -> list[StepReply]:
        # the tick in a worker thread: the replica's event loop (Serve's health checks, the
        # next batch's requests) is not held for it; batches run one at a time
        # (serve.batch's max_concurrent_batches 1), so the core sees one caller
        return await asyncio.to_thread(self.core.handle, requests)

    def info(self) -> dict:
        """Who this replica is and what it holds (tests, `streamav serve` logs)."""
        return {"replica": self.name, "node_id": self.node_id, "engine": self.core.label,
                "capacity": self.core.capacity, "streams": sorted(self.core.streams),
                "batches": self.core.batches, "frames": self.core.frames}


def model_app(settings: ModelSettings, placement: Placement = Placement()):
    """The bound model deployment: `placement.replicas` replicas, the sticky router, at most
    `capacity` requests in flight per replica (one per stream)."""
    actor_options: dict = {"num_cpus": placement.num_cpus}
    if placement.num_gpus:
        actor_options["num_gpus"] = placement.num_gpus
    options: dict = dict(
        num_replicas=placement.replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=max(2 * settings.capacity, 2),
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_CLASS),
        health_check_period_s=2.0, health_check_timeout_s=30.0,
    )
    if placement.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = placement.max_replicas_per_node
    return StreamModel.options(**options).bind(asdict(settings))
