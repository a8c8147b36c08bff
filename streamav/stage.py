"""What a stage of the live pipeline is: one Protocol, the four calls the pipeline makes.

    stage.start()        open what it needs (a graph, an engine); before the first step
    stage.step(...)      one frame in, its result out (each stage its own inputs and result)
    stage.reset()        a new person: forget everything carried from earlier frames
    stage.stop()         close; idempotent, and works after a partial start

`Stage[[inputs...], result]` names a stage by its step's arguments and result, e.g. the face
front end is a `Stage[[np.ndarray], FaceResult]`. The pipeline (streamav/pipeline.py) is typed
against it and calls these four and nothing else it has to look up with `getattr`; the face
front end (streamav/frontend/face.py), the model stage (streamav/model_stage.py) and the audio
front end (streamav/frontend/spectrum.py) are stages. `LivePipeline.reset(reason)` calls every
stage's `reset()` between two frames, in the worker thread, never under a step.

It is a structural type (typing.Protocol): a stage does not inherit from it, and this module
imports nothing, so it sits in the foundation layer (docs/architecture.md).
"""

from __future__ import annotations

from typing import ParamSpec, Protocol, TypeVar

__all__ = ["Stage"]

P = ParamSpec("P")
R = TypeVar("R", covariant=True)


class Stage(Protocol[P, R]):
    """A pipeline stage whose `step` takes `P` and returns `R`."""

    def start(self) -> None:
        """Open what the stage needs; called once before the first `step`."""

    def step(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """One frame's inputs in, its result out."""

    def reset(self) -> None:
        """A new person: drop all state carried from earlier frames (the stage stays started)."""

    def stop(self) -> None:
        """Close; idempotent, and safe after a partial `start`."""
