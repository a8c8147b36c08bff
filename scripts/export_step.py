"""Regenerate the step a model folder ships for the runtime without PyTorch.

    python scripts/export_step.py [MODEL_DIR]     (default: streamav/data/model)

Writes MODEL_DIR/step.onnx (the batch-1 step, float16-stored weights cast to float32 at load)
and MODEL_DIR/step.json (its sha256, the sha256 of the model.safetensors it was made from, the
initial state, parity against eager). Run it after every change of the weights: the runtime
refuses a step.onnx made from other weights, and tests/test_shipped_step.py fails on it.
Needs `pip install -e '.[train]'` (torch, onnx, onnxscript).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    from streamav.data import default_model_folder
    from streamav.engines.ship import write_shipped_step
    from streamav.offline_features import OfflineInputs

    torch.set_num_threads(1)
    folder = Path(argv[0]) if argv else default_model_folder()
    manifest = write_shipped_step(folder, OfflineInputs())
    print(json.dumps({k: manifest[k] for k in ("file", "bytes", "sha256", "source",
                                               "weights_stored", "parity", "export_s")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
