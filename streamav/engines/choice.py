"""The engine choice: which backend runs the model step, on which device, at which precision, for
how many streams. One frozen type, checked when it is made, used by every caller: the config's
[model] section (`--backend`, `--device`), the live model stage, `streamav bench` and
`streamav build-engines`, and the engines themselves (`StepEngine.spec`). This module imports
no torch.

    EngineChoice()                          auto on the CPU, fp32, batch 1: what live runs
    EngineChoice("onnx", precision="int8")  a named backend
    EngineChoice.parse("onnx:int8")         bench's "backend[:precision]" syntax

What is checked here is what holds on every machine: the names, and the precisions each
backend builds. Whether a backend can run *here* (a CUDA GPU, an installed package) is checked
when an engine is opened (streamav.engines.registry.check_backend).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from streamav.errors import InputError

AUTO = "auto"
BACKEND_NAMES: tuple[str, ...] = ("eager", "onnx", "compile", "tensorrt")
DEVICES: tuple[str, ...] = ("cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

# `auto` takes the first of these that can run here, in the order measured fastest
# (BENCHMARKS.md); docs/engines.md.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("onnx", "eager"),
                                          "cuda": ("tensorrt", "compile", "onnx", "eager")}


class EngineChoiceError(InputError):
    """An engine choice that cannot be: `field` is the one at fault (backend, device,
    precision, batch), `reason` the sentence without the field's name."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def precision_problem(backend: str, device: str, precision: str) -> str | None:
    """Why `backend` does not build `precision` on `device` (None: it does)."""
    if backend == "eager":
        if precision == "int8":
            return "eager runs fp32 or fp16; int8 is for --backend tensorrt (or onnx on a CPU)"
        if precision == "fp16" and device == "cpu":
            return "eager fp16 runs on CUDA only (CPU half matmuls are slow); use fp32"
    elif backend == "onnx":
        if precision == "fp16":
            return "--backend onnx builds fp32 or int8 engines; fp16 is for tensorrt"
    elif backend == "compile":
        if precision != "fp32":
            return "--backend compile builds fp32; use tensorrt for fp16/int8"
    return None


@dataclass(frozen=True)
class EngineChoice:
    """Backend (a name of BACKEND_NAMES, or `auto`), device, precision, and the static batch
    (streams per step). Invalid values raise EngineChoiceError (an InputError, exit 2)."""

    backend: str = AUTO
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1

    def __post_init__(self) -> None:
        if self.backend != AUTO and self.backend not in BACKEND_NAMES:
            raise EngineChoiceError("backend", f"unknown backend {self.backend!r}: choose from "
                                    f"{', '.join(BACKEND_NAMES)} or {AUTO}")
        if self.device not in DEVICES:
            raise EngineChoiceError("device", f"unknown device {self.device!r}: choose "
                                    f"{' or '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise EngineChoiceError("precision", f"unknown precision {self.precision!r}: choose "
                                    f"{', '.join(PRECISIONS)}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise EngineChoiceError("batch", f"--batch must be at least 1, got {self.batch!r}")
        if self.backend != AUTO:
            problem = precision_problem(self.backend, self.device, self.precision)
            if problem:
                raise EngineChoiceError("precision", problem)
        elif not self.auto_candidates():
            tried = ", ".join(AUTO_ORDER[self.device])
            raise EngineChoiceError("precision", f"no backend builds {self.precision} on "
                                    f"{self.device} (auto tries {tried})")

    @classmethod
    def parse(cls, text: str, device: str = "cpu", batch: int = 1) -> EngineChoice:
        """'onnx:int8' → EngineChoice('onnx', device, 'int8', batch); 'eager' → fp32."""
        backend, _, precision = text.strip().lower().partition(":")
        return cls(backend, device, precision or "fp32", batch)

    @property
    def is_auto(self) -> bool:
        return self.backend == AUTO

    def with_backend(self, backend: str) -> EngineChoice:
        """The same choice for another backend (`auto` resolved); EngineChoiceError when that
        backend does not build this precision."""
        return dataclasses.replace(self, backend=backend)

    def auto_candidates(self) -> tuple[str, ...]:
        """The backends `auto` tries on this device, in order, that build this precision."""
        return tuple(name for name in AUTO_ORDER[self.device]
                     if precision_problem(name, self.device, self.precision) is None)

    @property
    def name(self) -> str:
        """'onnx', or 'onnx:int8' for a precision other than fp32 (bench's rows and syntax)."""
        return self.backend if self.precision == "fp32" else f"{self.backend}:{self.precision}"

    @property
    def label(self) -> str:
        """Short name for tables and logs, e.g. 'onnx/cpu/fp32/b1'."""
        return f"{self.backend}/{self.device}/{self.precision}/b{self.batch}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
