"""Model folders: save/load round trip (float32 and float16) and one clear error per bad folder."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from streamav.errors import InputError  # noqa: E402
from streamav.model.config import EmotionHeadConfig, preset, with_overrides  # noqa: E402
from streamav.model.io import (CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, ModelFolderError,  # noqa: E402
                               load_model, read_model_config, save_model)
from streamav.model.streaming import StreamingModel  # noqa: E402
from streamav.model.synthetic import smooth_sequences  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> StreamingModel:
    torch.manual_seed(0)
    m = StreamingModel(preset("default"))
    m.audio.train()(torch.rand(8, 513) + 0.01)  # EMA buffers hold something other than init
    return m.eval()


@pytest.fixture
def folder(tmp_path, model):
    return save_model(model, tmp_path / "m", extra={"note": "test"})


def _outputs(model: StreamingModel):
    spectra, faces = smooth_sequences(1, 4, seed=9)
    with torch.no_grad():
        return model.run_sequence(spectra, faces)


def test_round_trip_gives_equal_outputs(model, folder):
    loaded = load_model(folder)
    assert loaded.cfg == model.cfg and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    (a, sa), (b, sb) = _outputs(model), _outputs(loaded)
    for x, y in zip((*a, *sa), (*b, *sb)):
        assert torch.equal(x, y)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["format_version"] == FORMAT_VERSION == 2 and meta["preset"] == "default"
    assert meta["labels"][0] == "angry" and len(meta["weights_sha256"]) == 64
    assert meta["extra"] == {"note": "test"}
    cfg, _ = read_model_config(folder)
    assert cfg == model.cfg


def test_half_precision_folder_is_smaller_and_close(model, tmp_path):
    full = save_model(model, tmp_path / "f32")
    half = save_model(model, tmp_path / "f16", half=True)
    assert (half / WEIGHTS_FILE).stat().st_size < 0.6 * (full / WEIGHTS_FILE).stat().st_size
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    (a, _), (b, _) = _outputs(model), _outputs(loaded)
    assert float((a.emotion_probs - b.emotion_probs).abs().max()) < 1e-2


def _error(folder) -> str:
    with pytest.raises(ModelFolderError) as info:
        load_model(folder)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_folder(tmp_path):
    assert "does not exist" in _error(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _error(tmp_path / "file")


def test_incomplete_folder(folder):
    (folder / WEIGHTS_FILE).unlink()
    assert f"no {WEIGHTS_FILE}" in _error(folder)
    (folder / CONFIG_FILE).unlink()
    assert f"no {CONFIG_FILE}" in _error(folder)


def test_truncated_weights(folder):
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    assert "sha256" in _error(folder)
    with pytest.raises(ModelFolderError, match="not a readable safetensors"):
        load_model(folder, verify_hash=False)


def _edit_config(folder, edit) -> None:
    meta = json.loads((folder / CONFIG_FILE).read_text())
    edit(meta)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))


def test_other_format_version(folder):
    _edit_config(folder, lambda m: m.update(format_version=1))  # before the identity path
    assert "format version 1" in _error(folder) and "version 2" in _error(folder)


def test_not_a_model_config(folder):
    (folder / CONFIG_FILE).write_text("{not json")
    assert "not readable JSON" in _error(folder)
    (folder / CONFIG_FILE).write_text(json.dumps({"format": "something-else"}))
    assert "not a streamav model config" in _error(folder)


def test_bad_model_config(folder):
    _edit_config(folder, lambda m: m["model"]["mdvae"].pop("w_dim"))
    assert "bad model config" in _error(folder) and "w_dim" in _error(folder)


def test_mismatched_shapes(folder, model, tmp_path):
    # a config that says w is 64-d next to weights made for 84
    def shrink_w(meta):
        meta["model"]["mdvae"]["w_dim"] = 64
    _edit_config(folder, shrink_w)
    message = _error(folder)
    assert "mismatched shapes" in message and "(168,) != (128,)" in message

    # weights of another model (8 labels) under a config with 6 labels: shapes differ too
    labels = ("angry", "disgusted", "fear", "happy", "neutral", "sad")
    six = StreamingModel(with_overrides(preset("default"), emotion=EmotionHeadConfig(labels)))
    other = save_model(six, tmp_path / "six")
    (other / WEIGHTS_FILE).write_bytes((save_model(model, tmp_path / "eight") / WEIGHTS_FILE)
                                       .read_bytes())
    message = _error(other)  # the sha256 no longer matches first
    assert "sha256" in message
    with pytest.raises(ModelFolderError, match="emotion.net.weight"):
        load_model(other, verify_hash=False)


def test_missing_tensors(folder):
    import safetensors.torch as st

    tensors = st.load_file(str(folder / WEIGHTS_FILE))
    tensors.pop("mdvae.gru_av.ih.weight")
    tensors["surprise"] = torch.zeros(1)
    st.save_file(tensors, str(folder / WEIGHTS_FILE))
    with pytest.raises(ModelFolderError, match="gru_av.ih.weight missing, surprise unexpected"):
        load_model(folder, verify_hash=False)
