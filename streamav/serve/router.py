"""Stream-sticky request routing for the model deployment (a Ray Serve request router).

Serve's own `ConsistentHashRouter` (ray.serve.experimental, Ray 2.60) maps a session id to a
replica on a hash ring. That is sticky while the replicas stay the same, but a replica that is
added - the one Serve starts to replace a dead one, or one the autoscaler adds - takes over a
share of the ring, and with it streams that were running well elsewhere: their state would be
left behind. A recurrent model's stream must stay where its state is, so this router keeps an
assignment table on top of the ring:

- a stream (the request's `session_id`: `handle.options(session_id=stream_id)`) seen for the
  first time goes to the replica holding the fewest streams, ties broken by the stream's
  consistent-hash order of the replicas (deterministic for a given set of replicas);
- from then on every request of the stream goes to that replica, and nowhere else: no
  fallback when it is busy (the request waits: back-pressure stays on the stream that caused
  it), so frames of one stream are never stepped on two replicas;
- when the replica dies (Serve reports it, or the controller's replica list drops it) its
  streams are unassigned, and each is assigned again, by the same rule, at its next request.
  The ingress (streamav.serve.ingress) sends that request with the stream's last snapshot;
- a stream's `leave` request (its end) goes to its replica and unassigns it.

New replicas thus only take new streams and moved ones. The table lives in the router of the
process that holds the handle: the ingress, of which there is one per application.
"""

from __future__ import annotations

import logging
from typing import Optional

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter
from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica

log = logging.getLogger(__name__)

ROUTER_CLASS = "streamav.serve.router.StreamStickyRouter"


class StreamStickyRouter(ConsistentHashRouter):
    """See the module docstring."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._assigned: dict[str, ReplicaID] = {}

    def initialize_state(self, **kwargs) -> None:
        # every replica of the ring ranked for a stream (the tie-break of a first assignment)
        super().initialize_state(num_virtual_nodes=kwargs.get("num_virtual_nodes", 100),
                                 num_fallback_replicas=kwargs.get("num_fallback_replicas", 64))

    @property
    def assignments(self) -> dict[str, str]:
        """{stream id: replica unique id} now."""
        return {stream: r.unique_id for stream, r in self._assigned.items()}

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._forget_gone()

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget_gone()

    def _forget_gone(self) -> None:
        gone = [s for s, r in self._assigned.items() if r not in self._replicas]
        for stream in gone:
            log.info("stream %s: its replica %s is gone; it moves at its next request",
                     stream, self._assigned[stream].unique_id)
            del self._assigned[stream]

    def _assign(self, stream: str, candidates: list[RunningReplica]) -> ReplicaID:
        load: dict[ReplicaID, int] = {r.replica_id: 0 for r in candidates}
        for replica in self._assigned.values():
            if replica in load:
                load[replica] += 1
        order = {rid: i for i, rid in enumerate(self._lookup_ranked_replicas(stream))}
        chosen = min(load, key=lambda rid: (load[rid], order.get(rid, len(order)),
                                            rid.unique_id))
        self._assigned[stream] = chosen
        return chosen

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result) -> None:
        stream = pending_request.metadata.session_id
        args = pending_request.args
        if stream and args and getattr(args[0], "kind", None) == "leave":
            if self._assigned.get(stream) == replica_id:
                del self._assigned[stream]  # the stream has ended: its share of the load too

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: Optional[PendingRequest] = None
                              ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        stream = None if pending_request is None else pending_request.metadata.session_id
        if not stream:  # not a stream's request (none are sent so): any replica
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True
        replica_id = self._assigned.get(stream)
        if replica_id is None or replica_id not in self._replicas:
            replica_id = self._assign(stream, candidate_replicas)
        replica = self._replicas.get(replica_id)
        return [[replica]] if replica is not None else []
