"""`streamav serve`: Ray (started here, or an existing cluster), the model deployment, the ingress.

    handle = deploy(ModelSettings(folder), Placement(replicas=2))   # Ray already connected
    ingress = Ingress(handle, IngressSettings(listen=..., publish=...)); ingress.start()
    ...
    run_serve(ServeOptions(...))   # all of it, until SIGINT / SIGTERM / SIGHUP or --duration

Serve runs without its HTTP proxy: the only way in is the ingress's ZeroMQ socket, and the only
way out its PUB edge (docs/scaling.md).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamav.errors import StreamavError
from streamav.serve import require_serve
from streamav.serve.ingress import IngressSettings

log = logging.getLogger(__name__)

APP_NAME = "streamav"


@dataclass(frozen=True)
class ServeOptions:
    model_folder: Path
    address: str | None = None  # a Ray cluster (`ray start --head` prints it); None: local Ray
    replicas: int = 2
    capacity: int = 8  # stream slots per replica
    snapshot_every: int = 30
    backend: str = "onnx"
    device: str = "cpu"
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica (a fraction shares a GPU)
    max_replicas_per_node: int | None = None
    engine_dir: Path | None = None
    ingress: IngressSettings = field(default_factory=IngressSettings)
    duration_s: float | None = None
    app_name: str = APP_NAME


def deploy(settings, placement, app_name: str = APP_NAME):
    """Run the model application on the connected Ray cluster; its handle."""
    from ray import serve

    from streamav.serve.deployment import model_app

    serve.start(proxy_location="Disabled")
    return serve.run(model_app(settings, placement), name=app_name, route_prefix=None,
                     blocking=False)


def run_serve(options: ServeOptions, on_ready=None) -> dict:
    """Serve until a stop signal or `duration_s`; the ingress's summary."""
    require_serve()
    import ray
    from ray import serve

    from streamav.serve.deployment import ModelSettings, Placement
    from streamav.serve.ingress import Ingress

    stop = threading.Event()
    reasons: list[str] = []

    def on_signal(signum, _frame):
        reasons.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started_ray = not ray.is_initialized()
    try:
        if started_ray:
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            for s in previous:  # ray.init put its own (fatal) SIGTERM handler in place
                signal.signal(s, on_signal)
        settings = ModelSettings(
            folder=str(options.model_folder), backend=options.backend, device=options.device,
            capacity=options.capacity, snapshot_every=options.snapshot_every,
            engine_dir=str(options.engine_dir) if options.engine_dir else None)
        placement = Placement(replicas=options.replicas, num_cpus=options.num_cpus,
                              num_gpus=options.num_gpus,
                              max_replicas_per_node=options.max_replicas_per_node)
        handle = deploy(settings, placement, options.app_name)
        ingress = None
        try:  # from here on the application is deployed: deleted however this ends
            ingress = Ingress(handle, options.ingress)
            ingress.start()
            log.info("serving: frames in on %s, results on %s, %d replicas x %d streams",
                     options.ingress.listen, options.ingress.publish, options.replicas,
                     options.capacity)
            if on_ready is not None:
                on_ready()
            deadline = (None if options.duration_s is None
                        else time.monotonic() + options.duration_s)
            while not stop.wait(0.5):  # short waits: a signal's handler runs between them
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if not ingress.alive:
                    raise StreamavError("the ingress has stopped serving (see the log above)")
        finally:
            try:
                if ingress is not None:
                    ingress.stop()
            finally:
                serve.delete(options.app_name)
        summary = ingress.summary()
        summary["stopped"] = reasons[0] if reasons else "duration reached"
        return summary
    finally:
        if started_ray:
            try:
                if options.address is None:  # our own Ray: Serve goes with it
                    serve.shutdown()
            finally:
                ray.shutdown()  # a cluster joined is left running, without our application
        for s, handler in previous.items():
            signal.signal(s, handler)
