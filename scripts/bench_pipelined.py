"""`[run] pipelined` against the serial worker (#13 item 3), side by side: the bundled demo
clip looped, offline (300 frames as fast as possible: fps) and in real time (10 s: drops,
capture-to-publish/emotion latency), the process's CPU per frame; the two alternate round by
round (A B, then B A). Prints a line per run and the JSON of every run with the load average.

    python scripts/bench_pipelined.py 3      # rounds
"""
import json, os, sys, time, statistics
from streamav.config import load_config
from streamav.live import build_pipeline
from streamav.data import demo_clip_path
from streamav.bench.pipeline import free_endpoint
def run(pipelined, realtime):
    extra = {"run.duration_s": 10.0} if realtime else {"run.max_frames": 300}
    cfg = load_config(None, {"source.video": str(demo_clip_path()), "source.loop": True, "run.realtime": realtime,
      "run.preview": False, "publish.endpoint": free_endpoint(), "publish.control_endpoint": "none",
      "run.pipelined": pipelined, **extra})
    mark = {}
    p = build_pipeline(cfg, on_started=lambda: mark.setdefault("cpu", time.process_time()))
    f = p.run().final_stats
    cpu = time.process_time() - mark["cpu"]
    lat = f["latency_ms"]
    return {"fps": round(f["fps"], 2), "cpu_ms_per_frame": round(cpu * 1e3 / f["frames"], 2), "dropped": f["dropped_frames"],
            "c2p_p99": round(lat["capture_to_publish"]["p99"], 1), "c2e_p50": round(lat["capture_to_emotion"]["p50"], 1),
            "c2e_p99": round(lat["capture_to_emotion"]["p99"], 1)}
rows = {}
load0 = os.getloadavg()
for mode in ("offline", "realtime"):
    for r in range(int(sys.argv[1])):
        for piped in ((False, True) if r % 2 == 0 else (True, False)):
            res = run(piped, mode == "realtime")
            rows.setdefault(f"{mode} {'pipelined' if piped else 'serial'}", []).append(res)
            print(mode, piped, res, [round(x, 2) for x in os.getloadavg()], flush=True)
print(json.dumps({"load_start": load0, "load_end": os.getloadavg(), "rows": rows}))
