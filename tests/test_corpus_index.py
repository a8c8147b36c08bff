"""The corpus indexers on real file names: the six real CREMA-D clips, and MEAD, RAVDESS, folder
and synth layouts built from small real mp4 files named the way those corpora name them. Bad
names, unknown emotions and missing audio are reported per file and never stop the index.

`tiny_media` (also used by the cache and dataset tests) makes the small files once per session
from the first 40 frames of a real CREMA-D clip: an mp4 with audio, the same without audio, and
the audio alone as an .m4a (MEAD keeps its audio apart).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import CREMA_D, CREMA_D_CLIPS, cli_env, require_shared_data, streamav_command
from streamav.corpus.index import SYNTH_TRACE_NAMES, ClipRecord, index_corpus, print_index, \
    write_index_json
from streamav.corpus.labels import EMOTIONS, normalize_emotion
from streamav.errors import InputError

TINY_FRAMES = 40


@dataclass(frozen=True)
class TinyMedia:
    av_mp4: Path  # h264 video + aac audio
    video_only_mp4: Path  # h264 video, no audio stream
    audio_m4a: Path  # aac audio alone


def _encode(out: Path, frames: list[np.ndarray], pcm: np.ndarray, rate, sample_rate_hz: int,
            video: bool, audio: bool) -> None:
    import av

    with av.open(str(out), "w") as container:
        if video:
            vstream = container.add_stream("libx264", rate=rate)
            vstream.height, vstream.width = frames[0].shape[:2]
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"preset": "ultrafast", "crf": "20"}
        if audio:
            astream = container.add_stream("aac", rate=sample_rate_hz)
            astream.layout = "mono"
        if video:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode())
        if audio:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, np.float32),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate_hz, 0
            container.mux(astream.encode(frame))
            container.mux(astream.encode())


def tiny_media(folder: Path, n_frames: int = TINY_FRAMES) -> TinyMedia:
    """Small real clips cut from a CREMA-D clip (made once; reused when already there)."""
    import av

    require_shared_data()
    media = TinyMedia(folder / "tiny_av.mp4", folder / "tiny_video_only.mp4",
                      folder / "tiny_audio.m4a")
    if all(path.exists() for path in (media.av_mp4, media.video_only_mp4, media.audio_m4a)):
        return media
    folder.mkdir(parents=True, exist_ok=True)
    source = CREMA_D / "1001_DFA_HAP_XX.flv"
    images: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    with av.open(str(source)) as container:
        vin, ain = container.streams.video[0], container.streams.audio[0]
        rate, sample_rate_hz = vin.average_rate, ain.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate_hz)
        for packet in container.demux(vin, ain):
            for frame in packet.decode():
                if packet.stream.type == "video":
                    if len(images) < n_frames:
                        images.append(frame.to_ndarray(format="rgb24"))
                else:
                    chunks += [out.to_ndarray() for out in resampler.resample(frame)]
    pcm = np.concatenate(chunks, axis=1)[:, :int(n_frames / float(rate) * sample_rate_hz)]
    _encode(media.av_mp4, images, pcm, rate, sample_rate_hz, video=True, audio=True)
    _encode(media.video_only_mp4, images, pcm, rate, sample_rate_hz, video=True, audio=False)
    _encode(media.audio_m4a, images, pcm, rate, sample_rate_hz, video=False, audio=True)
    return media


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyMedia:
    return tiny_media(tmp_path_factory.getbasetemp() / "tiny-media")


def place(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def problems_by_name(result) -> dict[str, str]:
    return {Path(p.path).name: p.kind for p in result.problems}


# -- CREMA-D ---------------------------------------------------------------------------------


def test_crema_d_real_clips_give_the_right_emotions():
    require_shared_data()
    result = index_corpus(CREMA_D, "crema-d")
    assert result.problems == () and len(result.clips) == 6 == len(CREMA_D_CLIPS)
    by_id = {clip.clip_id: clip for clip in result.clips}
    assert {clip_id: clip.emotion for clip_id, clip in by_id.items()} == {
        "1001_DFA_ANG_XX": "angry", "1001_DFA_DIS_XX": "disgusted", "1001_DFA_FEA_XX": "fear",
        "1001_DFA_HAP_XX": "happy", "1001_DFA_NEU_XX": "neutral", "1001_DFA_SAD_XX": "sad"}
    for clip in result.clips:
        assert clip.speaker == "1001" and clip.sentence == "DFA" and clip.intensity is None
        assert clip.audio_path is None and clip.video_path.is_file()
        assert clip.corpus == "crema-d" and clip.split is None
    # The shipped labels.csv says the same (in its own spelling: anger, disgust, ...).
    with (CREMA_D / "labels.csv").open() as handle:
        for row in csv.DictReader(handle):
            assert by_id[row["clip"]].emotion == normalize_emotion(row["emotion"])
            assert by_id[row["clip"]].speaker == row["actor"]


def test_crema_d_videoflash_layout_reports_bad_files(tmp_path):
    require_shared_data()
    flash = tmp_path / "VideoFlash"
    for clip in CREMA_D_CLIPS:
        place(clip, flash / clip.name)
    place(CREMA_D_CLIPS[0], flash / "1002_IEO_HAP_HI.flv")
    place(CREMA_D_CLIPS[0], flash / "1003_TIE_SAD_LO.flv")
    place(CREMA_D_CLIPS[0], flash / "1001_DFA_XYZ_XX.flv")  # unknown emotion code
    place(CREMA_D_CLIPS[0], flash / "1001_DFA_ANG_ZZ.flv")  # unknown level
    place(CREMA_D_CLIPS[0], flash / "holiday.flv")  # not a CREMA-D name
    (flash / "1004_DFA_NEU_XX.flv").touch()  # empty (CREMA-D has a few broken files)
    (flash / "notes.txt").write_text("not media: not looked at")
    result = index_corpus(tmp_path, "crema-d")
    assert len(result.clips) == 8
    assert problems_by_name(result) == {
        "1001_DFA_XYZ_XX.flv": "unknown-emotion", "1001_DFA_ANG_ZZ.flv": "bad-name",
        "holiday.flv": "bad-name", "1004_DFA_NEU_XX.flv": "empty-file"}
    by_id = {clip.clip_id: clip for clip in result.clips}
    assert (by_id["1002_IEO_HAP_HI"].intensity, by_id["1002_IEO_HAP_HI"].speaker) == (3, "1002")
    assert (by_id["1003_TIE_SAD_LO"].emotion, by_id["1003_TIE_SAD_LO"].intensity) == ("sad", 1)


# -- MEAD ------------------------------------------------------------------------------------


def test_mead_layout_pairs_video_and_audio(tmp_path, tiny):
    def video(speaker, emotion, level, name):
        return place(tiny.video_only_mp4,
                     tmp_path / speaker / "video" / "front" / emotion / level / name)

    def audio(speaker, emotion, level, name):
        return place(tiny.audio_m4a, tmp_path / speaker / "audio" / emotion / level / name)

    for speaker in ("M003", "W009"):
        for emotion, level, number in (("angry", 3, "001"), ("contempt", 1, "002"),
                                       ("surprised", 2, "030")):
            video(speaker, emotion, f"level_{level}", f"{number}.mp4")
            audio(speaker, emotion, f"level_{level}", f"{number}.m4a")
    video("M003", "neutral", "level_1", "004.mp4")  # its audio is missing
    video("M003", "bored", "level_1", "001.mp4")  # not a MEAD emotion
    audio("M003", "bored", "level_1", "001.m4a")
    video("M003", "happy", "level_x", "001.mp4")  # bad level folder
    video("M003", "happy", "level_1", "take1.mp4")  # bad file name
    video("M003", "happy", "level_4", "001.mp4")  # MEAD has 3 levels
    place(tiny.video_only_mp4, tmp_path / "M003" / "video" / "left_30" / "angry" / "level_3"
          / "001.mp4")  # other camera views are not indexed

    result = index_corpus(tmp_path, "mead")
    assert len(result.clips) == 6 and result.speakers == ["M003", "W009"]
    kinds = sorted((Path(p.path).relative_to(tmp_path).as_posix(), p.kind)
                   for p in result.problems)
    assert kinds == [
        ("M003/video/front/bored/level_1/001.mp4", "unknown-emotion"),
        ("M003/video/front/happy/level_1/take1.mp4", "bad-name"),
        ("M003/video/front/happy/level_4/001.mp4", "bad-name"),
        ("M003/video/front/happy/level_x/001.mp4", "bad-name"),
        ("M003/video/front/neutral/level_1/004.mp4", "missing-audio")]
    clip = next(c for c in result.clips if c.clip_id == "W009_surprised_level_2_030")
    assert clip == ClipRecord(
        clip_id="W009_surprised_level_2_030",
        video_path=tmp_path / "W009/video/front/surprised/level_2/030.mp4",
        audio_path=tmp_path / "W009/audio/surprised/level_2/030.m4a", speaker="W009",
        emotion="surprised", intensity=2, sentence="030", corpus="mead")
    assert {c.emotion for c in result.clips} == {"angry", "contempt", "surprised"}
    # One speaker's folder given as the root works too.
    assert len(index_corpus(tmp_path / "W009", "mead").clips) == 3


# -- RAVDESS ---------------------------------------------------------------------------------


def test_ravdess_layout(tmp_path, tiny):
    actor1, actor2 = tmp_path / "Actor_01", tmp_path / "Video_Speech_Actor_02" / "Actor_02"
    names = {
        actor1: ["01-01-05-02-01-01-01.mp4",  # full AV, speech, angry, strong
                 "02-01-05-02-01-01-01.mp4",  # its video-only copy: ignored
                 "02-01-03-01-02-02-01.mp4",  # video-only without its AV twin: no audio
                 "01-01-02-01-01-01-01.mp4",  # calm: ignored (not a MEAD emotion)
                 "01-02-03-01-01-01-01.mp4",  # song: ignored
                 "01-01-09-01-01-01-01.mp4",  # emotion 09 does not exist
                 "01-01-03-01-01-01-02.mp4",  # actor 02 inside Actor_01
                 "01-01-03-03-01-01-01.mp4",  # intensity 03 does not exist
                 "clip_final.mp4"],
        actor2: ["01-01-08-01-02-01-02.mp4", "01-01-07-02-01-02-02.mp4",
                 "01-01-06-01-01-01-02.mp4", "01-01-01-01-02-02-02.mp4"],
    }
    for folder, files in names.items():
        for name in files:
            place(tiny.av_mp4 if name.startswith("01") else tiny.video_only_mp4, folder / name)
    result = index_corpus(tmp_path, "ravdess")
    by_id = {clip.clip_id: clip for clip in result.clips}
    assert sorted(by_id) == ["01-01-01-01-02-02-02", "01-01-05-02-01-01-01",
                             "01-01-06-01-01-01-02", "01-01-07-02-01-02-02",
                             "01-01-08-01-02-01-02"]
    assert problems_by_name(result) == {
        "02-01-03-01-02-02-01.mp4": "missing-audio", "01-01-09-01-01-01-01.mp4": "unknown-emotion",
        "01-01-03-01-01-01-02.mp4": "bad-name", "01-01-03-03-01-01-01.mp4": "bad-name",
        "clip_final.mp4": "bad-name"}
    assert sorted(i.kind for i in result.ignored) == ["calm", "song", "video-only-copy"]
    angry = by_id["01-01-05-02-01-01-01"]
    assert (angry.emotion, angry.intensity, angry.speaker, angry.sentence, angry.audio_path) == \
        ("angry", 3, "Actor_01", "01", None)
    assert [by_id[i].emotion for i in sorted(by_id)] == \
        ["neutral", "angry", "fear", "disgusted", "surprised"]
    assert by_id["01-01-08-01-02-01-02"].intensity == 2 and result.speakers == \
        ["Actor_01", "Actor_02"]


# -- folder and synth ------------------------------------------------------------------------


def test_folder_format_reads_the_shipped_crema_d_labels():
    require_shared_data()
    folder = index_corpus(CREMA_D, "folder")  # columns clip, actor, sentence, emotion, intensity
    crema = index_corpus(CREMA_D, "crema-d")
    assert folder.problems == ()
    assert [(c.clip_id, c.speaker, c.emotion, c.intensity, c.sentence, c.video_path)
            for c in folder.clips] == \
        [(c.clip_id, c.speaker, c.emotion, c.intensity, c.sentence, c.video_path)
         for c in crema.clips]


def test_folder_format_reports_bad_rows(tmp_path, tiny):
    place(tiny.av_mp4, tmp_path / "media" / "a.mp4")
    place(tiny.video_only_mp4, tmp_path / "media" / "b.mp4")
    place(tiny.audio_m4a, tmp_path / "sound" / "b.m4a")
    place(tiny.av_mp4, tmp_path / "c.mp4")
    rows = [
        ["path", "speaker", "emotion", "intensity", "audio", "split"],
        ["media/a.mp4", "alice", "Happiness", "high", "", "train"],
        ["media/b.mp4", "bob", "surprise", "1", "sound/b.m4a", "validation"],
        ["c.mp4", "carol", "calm", "", "", ""],  # calm is not one of the 8
        ["c.mp4", "carol", "sad", "very", "", ""],  # bad intensity
        ["c.mp4", "carol", "sad", "", "sound/none.m4a", ""],  # audio missing
        ["missing.mp4", "dave", "sad", "", "", ""],  # no such video
        ["c.mp4", "", "sad", "", "", ""],  # no speaker
        ["c.mp4", "carol", "fear", "2", "", "holdout"],  # bad split
    ]
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    result = index_corpus(tmp_path, "folder")
    assert [(c.clip_id, c.speaker, c.emotion, c.intensity, c.split) for c in result.clips] == [
        ("media__a", "alice", "happy", 3, "train"), ("media__b", "bob", "surprised", 1, "val")]
    assert result.clips[1].audio_path == tmp_path / "sound" / "b.m4a"
    assert [p.kind for p in result.problems] == [
        "unknown-emotion", "bad-row", "missing-audio", "missing-video", "bad-row", "bad-row"]
    assert all(":" in p.reason or p.kind == "missing-video" for p in result.problems)

    (tmp_path / "labels.csv").write_text("file,emotion\nc.mp4,sad\n")
    with pytest.raises(InputError, match="speaker"):
        index_corpus(tmp_path, "folder")


def write_synth_corpus(root: Path, media: Path, rows: list[dict], n_frames: int) -> None:
    """A corpus laid out like `streamav corpus synth` output, with ramp traces (value = frame)."""
    for row in rows:
        place(media, root / "clips" / f"{row['clip']}.mp4")
        (root / "traces").mkdir(parents=True, exist_ok=True)
        ramp = np.arange(n_frames, dtype=np.float32)
        np.savez(root / "traces" / f"{row['clip']}.npz",
                 **{name: ramp + k * 1000 for k, name in enumerate(SYNTH_TRACE_NAMES)})
    fields = ["clip", "speaker", "sentence", "emotion", "intensity", "split", "seed"]
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({"seed": 7, **row} for row in rows)


def test_synth_layout(tmp_path, tiny):
    rows = [{"clip": "s00_happy_2_000", "speaker": "s00", "sentence": "0", "emotion": "happy",
             "intensity": 2, "split": "train"},
            {"clip": "s01_contempt_3_001", "speaker": "s01", "sentence": "1",
             "emotion": "contempt", "intensity": 3, "split": "test"}]
    write_synth_corpus(tmp_path, tiny.av_mp4, rows, TINY_FRAMES)
    result = index_corpus(tmp_path, "synth")
    assert result.problems == ()
    first = result.clips[0]
    assert first == ClipRecord(
        clip_id="s00_happy_2_000", video_path=tmp_path / "clips/s00_happy_2_000.mp4",
        audio_path=None, speaker="s00", emotion="happy", intensity=2, sentence="0",
        corpus="synth", split="train", traces_path=tmp_path / "traces/s00_happy_2_000.npz")
    assert result.clips[1].split == "test"
    (tmp_path / "traces" / "s01_contempt_3_001.npz").unlink()
    result = index_corpus(tmp_path, "synth")
    assert len(result.clips) == 1 and [p.kind for p in result.problems] == ["missing-traces"]


# -- errors, output --------------------------------------------------------------------------


def test_bad_root_and_format_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such corpus folder"):
        index_corpus(tmp_path / "nope", "mead")
    with pytest.raises(InputError, match="unknown corpus format"):
        index_corpus(tmp_path, "iemocap")
    with pytest.raises(InputError, match="labels.csv"):
        index_corpus(tmp_path, "folder")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        index_corpus(tmp_path / "file.txt", "crema-d")


def test_print_and_json(tmp_path, capsys):
    require_shared_data()
    result = index_corpus(CREMA_D, "crema-d")
    print_index(result)
    printed = capsys.readouterr().out
    assert "6" in printed and "angry" in printed and "1001" in printed
    write_index_json(result, tmp_path / "index.json")
    document = json.loads((tmp_path / "index.json").read_text())
    assert document["n_clips"] == 6 and document["emotions"]["surprised"] == 0
    assert list(document["emotions"]) == list(EMOTIONS)
    assert ClipRecord.from_json(document["clips"][0]) == result.clips[0]


def test_cli_index(tmp_path):
    require_shared_data()
    command = streamav_command()
    done = subprocess.run([*command, "corpus", "index", "--format", "crema-d", str(CREMA_D),
                           "--json", str(tmp_path / "i.json")], capture_output=True, text=True,
                          env=cli_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "crema-d corpus" in done.stdout and json.loads((tmp_path / "i.json").read_text())[
        "n_clips"] == 6
    bad = subprocess.run([*command, "corpus", "index", "--format", "voxceleb", str(tmp_path)],
                         capture_output=True, text=True, env=cli_env(), timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "unknown corpus format" in bad.stderr


def test_grid_layout_speaker_folders_and_loose_clips(tmp_path):
    """GRID as the corpus lays it out (s{N}/{sentence}.mpg) and as loose sample clips: every
    clip neutral read speech, the speaker from its folder or, loose, from its own name."""
    from conftest import SHARED_DATA

    grid = SHARED_DATA / "grid"
    if not grid.is_dir():
        pytest.skip("../shared/data/grid is not here")
    loose = index_corpus(grid, "grid")
    assert len(loose.clips) == 11 and not loose.problems
    assert {c.emotion for c in loose.clips} == {"neutral"} and loose.format == "grid"
    assert "grid-bbaf2n" in loose.speakers
    for speaker, name in (("s1", "bbaf2n.mpg"), ("s1", "brbk7n.mpg"), ("s2", "lbax4n.mpg")):
        (tmp_path / speaker).mkdir(exist_ok=True)
        (tmp_path / speaker / name).symlink_to(grid / name)
    laid_out = index_corpus(tmp_path, "grid")
    assert laid_out.speakers == ["grid-s1", "grid-s2"]
    assert sorted(c.clip_id for c in laid_out.clips) == ["s1_bbaf2n", "s1_brbk7n", "s2_lbax4n"]


def test_folder_without_labels_is_unlabelled(tmp_path):
    from streamav.corpus.labels import emotion_index, emotion_name

    (tmp_path / "alice").mkdir()
    for path in (tmp_path / "alice" / "a.mp4", tmp_path / "b.mkv"):
        path.write_bytes(b"not empty")
    (tmp_path / "notes.txt").write_text("ignored")
    result = index_corpus(tmp_path, "folder")
    assert sorted((c.clip_id, c.speaker, c.emotion) for c in result.clips) == [
        ("alice_a", "alice", ""), ("b", "b", "")]
    assert emotion_index("") == -1 and emotion_name(-1) == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no labels.csv and no video"):
        index_corpus(empty, "folder")
