"""`streamav eval`: reconstruction, denoising, few-shot emotion, identity and disentanglement of
a model folder on a feature cache's split, as one JSON report and a few PNGs.

    from streamav.evaluate import EvalSettings, evaluate, write_report
    report = evaluate("models/m", "caches/synth", EvalSettings(split="test"), plots_dir="plots")
    write_report(report, "eval.json")

The schema and every protocol decision are in docs/evaluation.md.
"""

from streamav.evaluate.report import (SCHEMA, SCHEMA_VERSION, EvalSettings, evaluate,
                                      print_summary, write_report)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "EvalSettings", "evaluate", "print_summary",
           "write_report"]
