"""The package's layers (docs/architecture.md): no module imports a module of a higher layer, or
of another component of its own layer, counting every import statement wherever it is - module
level, inside functions and methods, under `if TYPE_CHECKING:` - as `ast` finds them. Every
module of the package must belong to a layer, so a new module is placed on purpose.

A component is a list of patterns: `streamav.x.*` is the package (or module) `streamav.x` and
everything under it, anything else one module; a module belongs to the component with its most
specific pattern (an exact name, else the longest package). A module may import its own
component and every component of a lower layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streamav"

# Lowest first. Each layer: {component name: patterns}.
LAYERS: list[dict[str, tuple[str, ...]]] = [
    # 0: imported by everyone, importing nothing of streamav but each other
    {"foundation": ("streamav", "streamav.errors", "streamav.clock", "streamav.host",
                    "streamav.latency", "streamav.outputs", "streamav.stop_signals",
                    "streamav.stage", "streamav.data.*", "streamav.corpus.labels")},
    # 1: the leaves: capture, front end, messages (their types too), the model, the AV ring
    {"sources": ("streamav.sources.*",), "frontend": ("streamav.frontend.*",),
     "wire": ("streamav.wire.*",), "model": ("streamav.model.*",),
     "ring": ("streamav.ring",)},
    # 2: the model step on every backend; the emotion estimator; the run's small parts, which
    #    build or read the typed messages: its stats, and what a person sees of it (the narrow
    #    view of a run, the preview, the status line)
    {"engines": ("streamav.engines.*",), "emotion": ("streamav.emotion.*",),
     "run_stats": ("streamav.run_stats",),
     "display": ("streamav.run_view", "streamav.preview", "streamav.status_line")},
    # 3: the run's config (composed of the leaves' sections and the engine choice); the step
    #    behind one numpy interface
    {"config": ("streamav.config",), "model_runner": ("streamav.model_runner", "streamav.stream_slots")},
    # 4: the live model stage
    {"model_stage": ("streamav.model_stage",)},
    # 5: the live pipeline (one stream, or a stream per tracked face of one source)
    {"pipeline": ("streamav.pipeline", "streamav.face_streams")},
    # 6: the pipeline run offline over whole clips (features, the engines' real inputs); what a
    #    live run writes besides its messages
    {"offline_features": ("streamav.offline_features",),
     "run_outputs": ("streamav.run_outputs",), "recording": ("streamav.recording",),
     "lsl_outlet": ("streamav.lsl_outlet",)},
    # 7: what the commands run: live, the corpus and its cache, calibration profiles, engine
    #    builds, device listing
    {"live": ("streamav.live", "streamav.multi_live"), "corpus": ("streamav.corpus.*",),
     "calibrate": ("streamav.calibrate",), "build_engines": ("streamav.build_engines",),
     "devices": ("streamav.devices",), "replay": ("streamav.replay",)},
    # 8: past one machine: the model on Ray Serve (replicas, sticky router, ingress) and its
    #    capture client (`live --remote`), on the many-stream run
    {"serve": ("streamav.serve.*",)},
    # 9: training; benchmarks (the step, the live path, serve)
    {"train": ("streamav.train.*",), "bench": ("streamav.bench.*",)},
    # 10: evaluation (reads the training code's batches and heads)
    {"evaluate": ("streamav.evaluate.*",)},
    # 11: the command line
    {"cli": ("streamav.cli", "streamav.keys_cli", "streamav.__main__")},
]

# The packages the issue names as leaves below everything that runs them (#11 item 6).
LEAVES = ("sources", "frontend", "wire", "model", "engines")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def component_of(module: str) -> tuple[int, str] | None:
    """(layer, component) of a module: its exact pattern, else its longest package pattern."""
    best: tuple[int, int, str] | None = None  # (specificity, layer, component)
    for layer, components in enumerate(LAYERS):
        for component, patterns in components.items():
            for pattern in patterns:
                if pattern.endswith(".*"):
                    package = pattern[:-2]
                    if module == package or module.startswith(package + "."):
                        score = len(package)
                    else:
                        continue
                elif module == pattern:
                    score = 10_000
                else:
                    continue
                if best is None or score > best[0]:
                    best = (score, layer, component)
    return None if best is None else (best[1], best[2])


def imported_modules(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every streamav module this file imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from streamav.x import y` where y is a module imports streamav.x.y too
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                      if f"{target}.{alias.name}" in MODULES]
    return [(line, name) for line, name in found
            if name == "streamav" or name.startswith("streamav.")]


def _importable(name: str) -> str:
    """The module an imported name is: itself, or the closest package above it."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def violations() -> list[str]:
    found = []
    for module, path in MODULES.items():
        here = component_of(module)
        if here is None:
            continue
        for line, imported in imported_modules(module, path):
            there = component_of(_importable(imported))
            if there is None or there[1] == here[1] or there[0] < here[0]:
                continue
            where = "a higher layer" if there[0] > here[0] else "another component of its layer"
            found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} (layer {here[0]} "
                         f"{here[1]}) imports {imported} ({where}: layer {there[0]} {there[1]})")
    return found


def test_every_import_of_the_package_names_a_module_that_exists():
    """`import streamav.x` and `from streamav.x import y` name real modules (a rename that
    left an import behind, even one under TYPE_CHECKING or in a rarely run function)."""
    missing = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            missing += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}"
                        for name in names
                        if name.split(".")[0] == "streamav" and name not in MODULES]
    assert not missing, "\n".join(missing)


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if component_of(m) is None)
    assert not unplaced, ("place these modules in LAYERS (tests/test_layers.py) and "
                          f"docs/architecture.md: {unplaced}")


def test_no_module_imports_a_higher_layer_or_a_peer():
    found = violations()
    assert not found, "imports against the layers (docs/architecture.md):\n" + "\n".join(found)


def test_the_leaves_are_below_everything_that_runs_them():
    """sources, frontend, wire and model sit on the foundation alone, engines on the model."""
    layer = {name: i for i, components in enumerate(LAYERS) for name in components}
    assert all(layer[name] == 1 for name in ("sources", "frontend", "wire", "model"))
    assert layer["engines"] == 2
    above = [name for name in layer if layer[name] > 2]
    assert {"config", "model_runner", "model_stage", "pipeline", "offline_features", "live",
            "bench", "cli"} <= set(above)
    assert set(LEAVES) <= set(layer)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The parser itself: a function-level import, a relative one and one under
    TYPE_CHECKING all count."""
    source = ("from __future__ import annotations\n"
              "from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n"
              "    from streamav.pipeline import LivePipeline\n"
              "def f():\n"
              "    from ..cli import main\n"
              "    import streamav.live as live\n"
              "    from streamav import config\n")
    path = tmp_path / "streamav" / "frontend" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    names = {name for _, name in imported_modules("streamav.frontend.x", path)}
    assert {"streamav.pipeline", "streamav.cli", "streamav.live", "streamav.config"} <= names


def test_engines_read_the_model_alone():
    """The engines run the model step: besides themselves they import the model and the
    foundation only - no front end, no config, no pipeline (their real frames are handed in,
    streamav.engines.inputs)."""
    allowed = {"engines", "model", "foundation"}
    found = []
    for module, path in MODULES.items():
        if component_of(module) != (2, "engines"):
            continue
        for line, imported in imported_modules(module, path):
            there = component_of(_importable(imported))
            if there is not None and there[1] not in allowed:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {imported}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("leaf", LEAVES)
def test_each_leaf_imports_nothing_above_it(leaf):
    """The same check, one leaf at a time: the message names the leaf that broke."""
    found = [v for v in violations() if f"(layer {1 if leaf != 'engines' else 2} {leaf})" in v]
    assert not found, "\n".join(found)
