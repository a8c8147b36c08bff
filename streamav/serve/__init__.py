"""streamav past one machine: the model on Ray Serve (`streamav serve`), fed by capture clients
(`streamav live --remote`). docs/scaling.md describes the topology.

    capture clients ──ZeroMQ──► ingress (streamav serve) ──Serve handle──► model replicas
      (front end)                 │  stream-sticky routing                 (state slots,
                                  └─► PUB edge (the usual topics)          batched step)

Ray is the optional `serve` extra, imported only by the modules that need it
(streamav.serve.router, .deployment, .app); `require_serve()` says how to install it.
streamav.serve.frames (the client-to-ingress wire) and streamav.serve.replica (a replica's
work, without Ray) import no Ray.
"""

from __future__ import annotations

import importlib.util

from streamav.errors import MissingDependencyError

SERVE_HINT = "pip install 'streamav[serve]' (Ray Serve)"


def serve_installed() -> bool:
    """Whether Ray Serve can be imported here (looked up, not imported)."""
    try:
        return importlib.util.find_spec("ray.serve") is not None
    except ModuleNotFoundError:  # no `ray` at all
        return False


def require_serve(what: str = "streamav serve") -> None:
    """MissingDependencyError (one line, with the install command) without Ray Serve."""
    if not serve_installed():
        raise MissingDependencyError(f"{what} needs Ray Serve: {SERVE_HINT}")
