#!/usr/bin/env python3
"""How strongly a calibration profile's person head should be pulled to the population head:
5-fold speaker cross-validation on a synthetic emotion cache (docs/model.md, "A profile").

    python scripts/cv_profile_head.py --cache out/emo/cache_synth20b [--json cv.json]

Per fold: 4 test speakers, 3 validation, the rest train; the estimator is refitted on the
training speakers with the shipped estimator's settings (`fit_estimator`, ~20 s), then each test
speaker is calibrated with k = 1 and 2 clips per class and read 2 s into each of their other
clips, by `streamav eval`'s own per-user protocol (`per_user`, 2 draws). Variants: the shipped rule
(`fit_profile`), and a person head of fixed L2 always fitted. Prints the running accuracy after
each fold (~2-3 min in all on 2 cores). Needs no torch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import streamav.emotion.fit as F
from streamav.data import default_model_folder
from streamav.emotion.estimator import EmotionEstimator
from streamav.evaluate.emotion import per_user
from streamav.train.sequences import load_clips

FIXED_L2 = (0.1, 1.0, 10.0, 100.0)


def always(l2: float):
    """A person head of this L2 for everyone with two labels or more."""
    def fit(estimator, name, clips, **_):
        profile = F._baseline_profile(estimator, name, clips)
        if len(profile.labels_seen) >= 2:
            x, y = F._calibration_examples(estimator, profile, clips)
            profile.weights, profile.bias = F._person_head(estimator, x, y, estimator.logits(x),
                                                           l2, 300, 0.5)
        return profile
    return fit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    shipped = EmotionEstimator.load(args.model or default_model_folder())
    labels = shipped.labels
    clips = [F.clip_frames(c, shipped.settings.groups) for c in load_clips(args.cache, "all")]
    clips = [c for c in clips if c.label in labels]
    speakers = list(np.random.default_rng(7).permutation(sorted({c.speaker for c in clips})))
    variants = {"shipped rule": F.fit_profile, **{f"L2 {l2:g} always": always(l2)
                                                  for l2 in FIXED_L2}}
    totals: dict[str, list[int]] = {}
    for fold in range(5):
        started = time.time()
        test = speakers[fold::5]
        rest = [s for s in speakers if s not in test]
        estimator = F.fit_estimator([c for c in clips if c.speaker in rest[3:]],
                                    [c for c in clips if c.speaker in rest[:3]], labels,
                                    shipped.settings)
        mine = [c for c in clips if c.speaker in test]
        for k in (1, 2):
            for name, fit in variants.items():
                result = per_user(estimator, mine, ks=(k,), draws=2, fit=fit)["by_k"][str(k)]
                total = totals.setdefault(f"k={k} {name}", [0, 0])
                total[0] += round(result["accuracy"] * result["tested"])
                total[1] += result["tested"]
        print(f"fold {fold} ({time.time() - started:.0f} s):",
              {key: round(r / n, 3) for key, (r, n) in totals.items()}, flush=True)
    if args.json:
        args.json.write_text(json.dumps(totals, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
