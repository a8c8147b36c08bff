"""`streamav eval`: the report's keys, types and ranges on real CREMA-D clips, the protocols on a
two-speaker cache with traces, the metrics against known values, the PNGs, and clean errors.

The model is the default preset with random weights (seeded) and an emotion head fitted on the
cache's w: what is tested is the evaluation, not the model's quality. The cache holds 3 real
CREMA-D clips (one actor, all in train). A second cache is derived from it: the same 3 clips as
speaker 1001 and horizontally mirrored as speaker 9001, all in the test split, with traces
measured on the real data (the spectrum's level as `mouth_open`, the eye line's angle from the
landmarks as `head_roll_deg`, the nose's offset as `head_yaw_deg`), so that the speaker-disjoint,
identity and disentanglement paths run on real pixels.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest

from conftest import (CREMA_D_CLIPS, TINY_PRESET, cli_env, require_shared_data, streamav_command,
                      tiny_config)

torch = pytest.importorskip("torch")

from streamav.frontend.corruption import EVAL_CORRUPTIONS  # noqa: E402

FAST = dict(denoise_clips=2, denoise_max_frames=24, draws=2)
PSNR_KEYS = ("noisy_db", "av_db", "v_only_db", "recon_psnr_db", "visual_psnr_db")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    require_shared_data()
    from streamav.corpus.cache import build_cache

    root = tmp_path_factory.mktemp("eval_corpus")
    for clip in [c for c in CREMA_D_CLIPS if any(e in c.name for e in ("ANG", "HAP", "SAD"))]:
        (root / clip.name).symlink_to(clip)
    out = tmp_path_factory.mktemp("eval_cache")
    summary = build_cache(root, "crema-d", out, workers=0)
    assert summary.failed == 0
    return out




@pytest.fixture(scope="module")
def model_dir(cache, tmp_path_factory):
    """Random tiny weights (seed 0) plus an emotion head fitted on the cache's w."""
    from streamav.model.io import save_model
    from streamav.model.streaming import StreamingModel
    from streamav.train.emotion import fit_model_emotion_head

    torch.manual_seed(0)
    model = StreamingModel(tiny_config()).eval()
    summary = fit_model_emotion_head(model, cache)
    out = tmp_path_factory.mktemp("eval_model") / "model"
    save_model(model, out, extra={"training": {"emotion": summary}})
    return out


def _traces(arrays: dict) -> tuple[np.ndarray, list[str]]:
    """Per-frame traces measured on a real clip (level, eye-line angle, nose offset)."""
    level = np.log10(arrays["spectrum"].mean(axis=1) + 1e-8)
    marks = arrays["landmarks_xy"].astype(np.float64)  # (T, 5, 2): eyes, nose, mouth corners
    eye_vec = marks[:, 1] - marks[:, 0]
    roll = np.degrees(np.arctan2(eye_vec[:, 1], eye_vec[:, 0]))
    eye_mid = marks[:, :2].mean(axis=1)
    yaw = (marks[:, 2, 0] - eye_mid[:, 0]) / np.maximum(np.linalg.norm(eye_vec, axis=1), 1e-6)
    return np.stack([level, yaw, roll], axis=1).astype(np.float32), [
        "mouth_open", "head_yaw_deg", "head_roll_deg"]


@pytest.fixture(scope="module")
def two_speaker_cache(cache, tmp_path_factory):
    from streamav.corpus.cache import load_manifest

    out = tmp_path_factory.mktemp("eval_cache2")
    (out / "clips").mkdir()
    manifest = load_manifest(cache)
    clips = []
    for clip in manifest["clips"]:
        with np.load(cache / clip["shard"]) as data:
            arrays = {k: data[k] for k in data.files}
        traces, names = _traces(arrays)
        for speaker, mirror in (("1001", False), ("9001", True)):
            shard = dict(arrays, traces=traces, trace_names=np.array(names))
            if mirror:
                shard["face_crop_rgb"] = np.ascontiguousarray(arrays["face_crop_rgb"][:, :, ::-1])
            clip_id = f"{speaker}_{clip['clip_id'].split('_', 1)[1]}"
            np.savez(out / "clips" / f"{clip_id}.npz", **shard)
            clips.append({**clip, "clip_id": clip_id, "speaker": speaker, "split": "test",
                          "shard": f"clips/{clip_id}.npz", "trace_names": names})
    manifest.update(clips=clips, speakers=["1001", "9001"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# -- checks shared by the tests ------------------------------------------------------------------


def _walk(tree, path=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _walk(value, f"{path}.{key}" if path else key)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _walk(value, f"{path}[{i}]")
    else:
        yield path, tree


def check_report(report: dict) -> None:
    """Keys, types and ranges every report must have (what CI checks)."""
    json.dumps(report, allow_nan=False)  # JSON-safe: no NaN, no numpy scalars
    for key in ("schema", "schema_version", "model", "cache", "settings", "recon_psnr_db",
                "audio_lsd_db", "reconstruction", "denoising", "emotion", "identity",
                "disentanglement", "targets", "plots", "timing_s", "wall_s"):
        assert key in report, key
    assert report["schema"] == "streamav-eval" and report["schema_version"] == 1
    assert len(report["model"]["config_sha256"]) == 16 and report["model"]["preset"] == TINY_PRESET
    assert report["cache"]["frontend_hash"] and len(report["cache"]["frontend_hash"]) == 16
    for path, value in _walk(report):
        leaf = path.rsplit(".", 1)[-1]
        if isinstance(value, float):
            assert math.isfinite(value), path
        if leaf in PSNR_KEYS and value is not None:
            assert 0.0 < value <= 100.0, (path, value)
        if ("accuracy" in path.split(".") or leaf == "chance") and isinstance(value, float):
            assert 0.0 <= value <= 1.0, (path, value)
        if leaf in ("max_abs_r", "r_linear_cv", "z_av", "z_v") and "disentanglement" in path:
            assert value is None or -1.0 <= value <= 1.0, (path, value)
    assert report["audio_lsd_db"] >= 0.0
    for block in (report["emotion"]["fewshot_speaker_disjoint"], report["emotion"]["within_actor"],
                  report["emotion"]["model_head"], report["identity"],
                  report["disentanglement"], report["denoising"]):
        assert isinstance(block["available"], bool)
        assert (block["reason"] is None) == block["available"], block
        if not block["available"]:
            assert isinstance(block["reason"], str) and block["reason"]
    corruptions = report["denoising"]["corruptions"]
    if report["denoising"]["available"]:
        assert list(corruptions) == list(report["settings"]["corruptions"])
    else:
        assert corruptions == {}
    for entry in corruptions.values():
        assert entry["av_minus_v_only_db"] == pytest.approx(entry["av_db"] - entry["v_only_db"],
                                                            abs=2e-3)
    for target in report["targets"]:
        assert set(target) == {"name", "op", "threshold", "value", "met"}
        assert target["met"] in (None, True, False)


# -- metrics, independent of any model -----------------------------------------------------------


def test_psnr_lsd_and_correlations_against_known_values():
    from streamav.evaluate.metrics import (PSNR_CAP_DB, linear_r_cv, log_spectral_distance_db,
                                           max_abs_pearson, pearson, psnr_db)

    a = np.full((2, 8, 8, 3), 0.5)
    assert psnr_db(a, a).tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]
    assert psnr_db(a, a + 0.1) == pytest.approx([20.0, 20.0])
    power = np.random.default_rng(0).uniform(1.0, 2.0, (5, 513))
    assert log_spectral_distance_db(power, power) == pytest.approx(np.zeros(5))
    assert log_spectral_distance_db(power, 10.0 * power) == pytest.approx(np.full(5, 10.0))
    t = np.linspace(0, 6, 200)
    assert pearson(np.sin(t), 3 * np.sin(t) + 1) == pytest.approx(1.0)
    assert pearson(np.ones(10), np.arange(10.0)) is None
    latent = np.stack([np.cos(t), -2 * np.sin(t)], axis=1)
    assert max_abs_pearson(latent, np.sin(t)) == (pytest.approx(1.0), 1)
    rng = np.random.default_rng(1)
    clips = [rng.normal(size=(50, 3)) for _ in range(4)]
    traces = [c @ np.array([1.0, -2.0, 0.5]) for c in clips]
    assert linear_r_cv(clips, traces, np.array([0, 1, 0, 1])) == pytest.approx(1.0)
    noise = [rng.normal(size=50) for _ in range(4)]
    assert abs(linear_r_cv(clips, noise, np.array([0, 1, 0, 1]))) < 0.3


def test_gaussian_0_2_costs_about_14_db_on_real_crops(cache):
    """Noisy-vs-clean PSNR of gaussian:0.2 is ~20 log10(1/0.2) = 14 dB (a little more: clipping)."""
    from streamav.evaluate.inputs import list_clips, load_clip
    from streamav.evaluate.metrics import psnr_db, uint8_to_unit
    from streamav.frontend.corruption import parse_corruption

    clip = load_clip(list_clips(cache, "train")[0][0])
    noisy = parse_corruption("gaussian:0.2").apply(clip.face_crop_rgb, np.random.default_rng(0))
    value = psnr_db(uint8_to_unit(clip.face_crop_rgb), uint8_to_unit(noisy)).mean()
    assert 13.5 < value < 15.5


def test_fewshot_heads_on_separable_w():
    """Heads read w where the protocol says: online at round(X * fps), offline at the end."""
    from streamav.evaluate.heads import (WSequence, fewshot_speaker_disjoint, identity_accuracy,
                                         readout)

    rng = np.random.default_rng(0)
    emotions, speakers = ("happy", "sad", "angry"), ("a", "b", "c", "d")
    seqs = []
    for s_index, speaker in enumerate(speakers):
        for e_index, emotion in enumerate(emotions):
            for n in range(4):
                w = rng.normal(0, 0.3, (40, 6)).astype(np.float32)
                w[:, e_index] += 3.0  # emotion
                w[:, 3 + s_index % 3] += 1.5 * (1 + s_index // 3)  # speaker
                w[:15] = 0.0  # nothing known for the first 0.5 s
                seqs.append(WSequence(f"{speaker}{emotion}{n}", f"{speaker}{emotion}{n}", speaker,
                                      emotion, 30.0, w, np.ones(40, bool)))
    assert readout(seqs[0], 0.5)[1] is False and np.all(readout(seqs[0], 0.4)[0] == 0.0)
    assert readout(seqs[0], 2.0)[1] is True  # 40 frames < 2 s: last frame, counted short
    result = fewshot_speaker_disjoint(seqs, emotions, ks=(1, 3), draws=3, online_s=(0.4, 1.0),
                                      seed=0, min_context_s=0.5, max_frames_per_sequence=20,
                                      confusion_k=3, confusion_at="offline")
    assert result["available"] and set(result["by_k"]) == {"1", "3"}
    for k in ("1", "3"):
        accuracy = result["by_k"][k]["accuracy"]
        assert accuracy["offline"]["mean"] > 0.9 and accuracy["online_1s"]["mean"] > 0.9
        assert accuracy["online_0.4s"]["mean"] < 0.7  # w of zeros: no information yet
    assert result["head_speakers_per_draw"] == 2 and result["by_k"]["3"]["classes_short_of_k"] == 0
    assert np.array(result["confusion"]["counts"]).sum() == result["by_k"]["3"][
        "test_sequences_total"]
    again = fewshot_speaker_disjoint(seqs, emotions, ks=(1, 3), draws=3, online_s=(0.4, 1.0),
                                     seed=0, min_context_s=0.5, max_frames_per_sequence=20,
                                     confusion_k=3, confusion_at="offline")
    assert again == result  # seeded
    ident = identity_accuracy(seqs, draws=2, online_s=(1.0,), seed=0, min_context_s=0.5,
                              max_frames_per_sequence=20)
    assert ident["available"] and ident["accuracy"]["offline"]["mean"] > 0.9
    one = fewshot_speaker_disjoint([s for s in seqs if s.speaker == "a"], emotions, ks=(1,),
                                   draws=1, online_s=(1.0,), seed=0, min_context_s=0.5,
                                   max_frames_per_sequence=20, confusion_k=1,
                                   confusion_at="offline")
    assert one["available"] is False and "speaker" in one["reason"] and one["by_k"] is None


def test_batched_runs_equal_single_runs(cache, model_dir):
    """Padding after a sequence's end changes nothing before it (the model is causal)."""
    from streamav.evaluate.batch import run_many
    from streamav.evaluate.inputs import list_clips, load_clip, open_model
    from streamav.train.sequences import run_clip

    model, _ = open_model(model_dir)
    clips = [load_clip(r) for r in list_clips(cache, "train")[0][:2]]
    items = [(clips[0].spectrum[:30], clips[0].face_crop_rgb[:30]),
             (clips[1].spectrum[:17], clips[1].face_crop_rgb[:17])]
    batched = run_many(model, items, frame_budget=32)
    for (spectrum, crops), out in zip(items, batched):
        single = run_clip(model, spectrum, crops)
        for a, b in zip(out, single):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# -- whole evaluations ---------------------------------------------------------------------------


def test_evaluate_on_one_actor(cache, model_dir):
    """CREMA-D, one actor: speaker-disjoint few-shot and identity are null with a reason, the
    within-actor protocol runs; reconstruction and denoising are measured."""
    from streamav.evaluate import EvalSettings, evaluate

    report = evaluate(model_dir, cache, EvalSettings(split="train", **FAST))
    check_report(report)
    assert report["cache"]["clips_used"] == 3 and report["cache"]["speakers_used"] == 1
    emotion = report["emotion"]
    assert emotion["classes"] == ["angry", "happy", "sad"] and emotion["chance"] == 1 / 3
    assert not emotion["fewshot_speaker_disjoint"]["available"]
    assert emotion["fewshot_speaker_disjoint"]["by_k"] is None
    within = emotion["within_actor"]
    assert within["available"] and within["test_sequences"] == 3
    assert set(within["accuracy"]) == {"online_0.5s", "online_1s", "online_2s", "offline"}
    assert within["short_test_sequences"]["online_2s"] == 3  # halves of ~2.2 s clips
    assert np.array(within["confusion"]["counts"]).sum() == 3
    assert emotion["model_head"]["available"]
    assert not report["identity"]["available"] and "speaker" in report["identity"]["reason"]
    assert not report["disentanglement"]["available"]
    assert "traces" in report["disentanglement"]["reason"]
    denoise = report["denoising"]
    assert denoise["available"] and denoise["clips"] == 2 and denoise["frames"] == 48
    assert 13.5 < denoise["corruptions"]["gaussian:0.2"]["noisy_db"] < 15.5
    assert denoise["corruptions"]["occlude_mouth"]["region"]["pixels"] > 100
    assert denoise["corruptions"]["gaussian:0.2"]["region"] is None
    g02 = denoise["corruptions"]["gaussian:0.2"]
    # the baselines on the same frames; the oracle blur + temporal mean beats blur alone
    assert g02["noisy_db"] < g02["blur_db"] <= g02["blur_temporal_db"] < 40
    assert g02["blur_sigma_px"] > 0 and g02["blur_temporal_tau_s"] > 0
    assert 5 < g02["vq_db"] < 40 and 5 < denoise["clean"]["vq_db"] < 40
    assert g02["av_minus_blur_temporal_db"] == round(g02["av_db"] - g02["blur_temporal_db"], 3)
    assert not denoise["identity"]["available"]  # one person: nobody to confuse it with
    assert set(report["reconstruction"]["visual_psnr_db_by_context"]) == {
        "0-0.5s", "0.5-1s", "1-2s", "2s-end"}
    assert report["plots"] is None


def test_evaluate_two_speakers_with_traces(two_speaker_cache, model_dir):
    from streamav.evaluate import EvalSettings, evaluate

    settings = EvalSettings(split="test", within_actor=True, **{**FAST, "denoise_clips": 0})
    report = evaluate(model_dir, two_speaker_cache, settings)
    check_report(report)
    disjoint = report["emotion"]["fewshot_speaker_disjoint"]
    assert disjoint["available"] and disjoint["unit"] == "segment"  # 2 clips per class < 2 x 10
    assert set(disjoint["by_k"]) == {"1", "5", "10"}
    assert disjoint["by_k"]["5"]["classes_short_of_k"] > 0
    assert disjoint["confusion"]["k"] == 5 and disjoint["confusion"]["at"] == "online_2s"
    assert report["emotion"]["within_actor"]["available"]
    assert report["emotion"]["within_actor"]["speakers"] == 2
    ident = report["identity"]
    assert ident["available"] and ident["speakers"] == 2 and ident["chance"] == 0.5
    dis = report["disentanglement"]
    assert dis["available"] and dis["clips"] == 6
    assert set(dis["traces"]) == {"mouth_open", "head_yaw_deg", "head_roll_deg"}
    assert set(dis["traces"]["mouth_open"]) == {"z_av", "z_v", "z_a"}
    assert dis["head_pose"]["traces"] == ["head_yaw_deg", "head_roll_deg"]
    assert not report["denoising"]["available"]
    assert [t["met"] for t in report["targets"]][2:4] == [None, None]
    again = evaluate(model_dir, two_speaker_cache, settings)  # seeded: the same report
    for key in ("created_utc", "timing_s", "wall_s"):
        report.pop(key), again.pop(key)
    assert again == report


def test_cli_eval_writes_json_and_plots(cache, model_dir, tmp_path):
    out, plots = tmp_path / "eval.json", tmp_path / "plots"
    result = subprocess.run(
        [*streamav_command(), "eval", "--model", str(model_dir), "--cache", str(cache),
         "--split", "train", "--json", str(out), "--plots", str(plots), "--denoise-clips", "2",
         "--denoise-max-frames", "20", "--draws", "1", "--no-progress"],
        capture_output=True, text=True, timeout=120, env=cli_env(), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "visual recon PSNR" in result.stdout
    report = json.loads(out.read_text())
    check_report(report)
    pngs = sorted(p.name for p in plots.glob("*.png"))
    denoise = [f"denoise_{spec.replace(':', '_')}.png" for spec in EVAL_CORRUPTIONS]
    assert pngs == sorted(["recon.png", "confusion.png", "fewshot.png", *denoise])
    assert "denoise_gaussian_0.2.png" in pngs and "denoise_occlude_mouth.png" in pngs
    import matplotlib.image

    for name in pngs:
        path = plots / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 100 and image.std() > 0.01, name
    assert report["plots"]["reconstruction"] == str(plots / "recon.png")
    assert set(report["plots"]["denoising"]) == set(report["settings"]["corruptions"])


@pytest.mark.parametrize("case", ["no_model", "no_cache"])
def test_cli_eval_missing_inputs_fail_in_one_line(case, cache, model_dir, tmp_path):
    model = tmp_path / "missing-model" if case == "no_model" else model_dir
    where = tmp_path / "missing-cache" if case == "no_cache" else cache
    result = subprocess.run(
        [*streamav_command(), "eval", "--model", str(model), "--cache", str(where),
         "--no-progress"],
        capture_output=True, text=True, timeout=60, env=cli_env(), stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamav: error:"), result.stderr
    assert "does not exist" in lines[0] and str(tmp_path) in lines[0]


def test_bad_inputs_are_input_errors(cache, model_dir, tmp_path):
    """Exit code 2 (InputError) with one line naming the problem."""
    from streamav.errors import InputError
    from streamav.evaluate import EvalSettings, evaluate
    from streamav.model.io import ModelFolderError

    with pytest.raises(InputError, match="the test split .* has no clip .*train: 3 clips"):
        evaluate(model_dir, cache, EvalSettings(split="test"))
    with pytest.raises(InputError, match="unknown split 'bogus'"):
        evaluate(model_dir, cache, EvalSettings(split="bogus"))
    with pytest.raises(InputError, match="unknown noise"):
        evaluate(model_dir, cache, EvalSettings(split="train", corruptions=("snow",)))
    not_a_cache = tmp_path / "empty"
    not_a_cache.mkdir()
    with pytest.raises(InputError, match="not a feature cache"):
        evaluate(model_dir, not_a_cache, EvalSettings(split="train"))

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="incomplete"):
        evaluate(broken, cache, EvalSettings(split="train"))


def test_evaluate_an_unlabelled_folder_of_real_clips(model_dir, tmp_path):
    """Anyone's own clips, no labels.csv: reconstruction and denoising are measured, identity is
    checked across the two people, and the emotion measures say n/a instead of a score."""
    from conftest import SHARED_DATA
    from streamav.corpus.cache import build_cache
    from streamav.evaluate import EvalSettings, evaluate

    require_shared_data()
    root = tmp_path / "mine"
    for name in ("bbaf2n.mpg", "brbk7n.mpg"):
        (root / name[:-4]).mkdir(parents=True)
        (root / name[:-4] / name).symlink_to(SHARED_DATA / "grid" / name)
    cache = tmp_path / "cache"
    assert build_cache(root, "folder", cache, workers=0).failed == 0
    report = evaluate(model_dir, cache, EvalSettings(split="all", **FAST))
    assert report["cache"]["speakers_used"] == 2 and report["emotion"]["classes"] == []
    assert report["emotion"]["chance"] is None
    assert not report["emotion"]["fewshot_speaker_disjoint"]["available"]
    assert "labelled emotion class" in report["emotion"]["fewshot_speaker_disjoint"]["reason"]
    few = [t for t in report["targets"] if t["name"].startswith("fewshot")]
    assert few and all(t["met"] is None for t in few)  # n/a, never "met"
    identity = report["denoising"]["identity"]
    assert identity["available"] and identity["people"] == 2
    assert identity["by_corruption"]["clean"]["speakers"] == 2
    assert 5 < report["audio_lsd_db"] < 30  # real speech, frames with audio only
