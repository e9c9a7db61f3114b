"""Fuzzing checkpoints (weights.py, ``MaskRCNN.from_checkpoint``): a damaged, foreign or
tampered file is an error naming the file and what is wrong, never a model with
garbage in it.

docs/errors.md lists each probe (the ``PROBES`` ids below) and what it gets.
"""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save
from tiny_model import tiny_config

from tinymaskrcnn import MaskRCNN
from tinymaskrcnn.train import load_training_state
from tinymaskrcnn.weights import FORMAT, load_checkpoint, load_into, save_checkpoint


@pytest.fixture(scope="module")
def model():
    return MaskRCNN(tiny_config(), rng=np.random.default_rng(0))


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    model.save(path)
    return _Saved(path, path.read_bytes())


class _Saved(tuple):
    """(path, bytes) whose repr is the path alone (hypothesis prints its arguments)."""

    def __new__(cls, path, data):
        return super().__new__(cls, (path, data))

    def __repr__(self):
        return f"_Saved({self[0]!s}, {len(self[1])} bytes)"


def _write(path, state, config_text, extra=None):
    """A checkpoint with any config text (save_checkpoint would serialise a real one)."""
    meta = {"format": FORMAT, "config": config_text, **(extra or {})}
    path.write_bytes(save({k: np.array(v, order="C") for k, v in state.items()}, metadata=meta))
    return path


# --- truncated, not safetensors, a folder ------------------------------------------------


@pytest.mark.parametrize("tenths", range(10))
def test_a_checkpoint_truncated_at_any_tenth_says_so_with_its_sizes(saved, tmp_path, tenths):
    path, data = saved
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) * tenths // 10])
    message = (
        r"shorter than the 8-byte header"
        if tenths == 0
        else rf"truncated: its header describes {len(data)} bytes, the file has "
        rf"{len(data) * tenths // 10}"
    )
    with pytest.raises(ValueError, match=rf"checkpoint '.*cut.safetensors' .*{message}"):
        MaskRCNN.from_checkpoint(cut)


@settings(max_examples=30)
@given(cut=st.integers(0, 10**6))
def test_a_checkpoint_cut_anywhere_is_a_value_error_naming_it(saved, cut):
    path, data = saved
    out = path.with_name("anywhere.safetensors")
    out.write_bytes(data[: cut % len(data)])
    with pytest.raises(ValueError, match=r"anywhere.safetensors' is truncated, corrupted"):
        load_checkpoint(out)


@settings(max_examples=30)
@given(position=st.integers(0, 10**6), value=st.integers(0, 255))
def test_a_changed_header_byte_is_named_or_leaves_every_name_and_shape(saved, position, value):
    # safetensors has no checksum: a changed byte that keeps the header valid (a space,
    # a digit of a threshold in the config) loads. What must never happen is a model
    # wired from renamed or reshaped tensors, or an error that does not name the file.
    path, data = saved
    n = 8 + int.from_bytes(data[:8], "little")
    position %= n
    out = path.with_name("flipped.safetensors")
    out.write_bytes(data[:position] + bytes([value]) + data[position + 1 :])
    try:
        model = MaskRCNN.from_checkpoint(out)
    except ValueError as err:
        assert "flipped.safetensors" in str(err)
    else:
        original = load_checkpoint(path)[0]
        assert {k: v.shape for k, v in model.state_dict().items()} == {
            k: v.shape for k, v in original.items()
        }


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, world\n" * 20, b"\x89PNG\r\n\x1a\n" + bytes(100), b"\xff" * 64],
    ids=["empty", "text", "png", "ff-bytes"],
)
def test_a_file_that_is_not_safetensors_is_a_value_error_naming_it(tmp_path, content):
    path = tmp_path / "notes.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"'.*notes.safetensors' is truncated, corrupted or not"):
        MaskRCNN.from_checkpoint(path)


def test_a_folder_instead_of_a_file_is_named_and_the_file_inside_suggested(saved, tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a safetensors file$"):
        MaskRCNN.from_checkpoint(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(saved[1])
    with pytest.raises(IsADirectoryError, match=r"did you mean '.*run/model.safetensors'\?"):
        MaskRCNN.from_checkpoint(run)


def test_a_missing_file_is_a_file_not_found_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*gone.safetensors' does not exist"):
        MaskRCNN.from_checkpoint(tmp_path / "gone.safetensors")


def test_an_unreadable_file_is_a_permission_error_naming_it(saved, tmp_path):
    path = tmp_path / "locked.safetensors"
    path.write_bytes(saved[1])
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 0 does not stop this user from reading")
        with pytest.raises(PermissionError, match="locked.safetensors"):
            MaskRCNN.from_checkpoint(path)
    finally:
        path.chmod(0o644)


# --- another model's file ------------------------------------------------------------------


def test_another_models_safetensors_lists_missing_unexpected_and_misshaped(model, tmp_path):
    state = model.state_dict()
    names = sorted(state)
    state[names[0]] = np.zeros((2, 2), np.float32)  # mis-shaped
    del state[names[1]]  # missing
    state["head.extra.weight"] = np.zeros(3, np.float32)  # unexpected
    path = save_checkpoint(tmp_path / "other.safetensors", state, model.cfg)
    with pytest.raises(ValueError) as caught:
        MaskRCNN.from_checkpoint(path)
    text = str(caught.value)
    assert "other.safetensors' does not fit this model" in text
    assert f"missing (1): {names[1]}" in text
    assert "unexpected (1): head.extra.weight" in text
    shape = tuple(model.state_dict()[names[0]].shape)
    assert f"misshaped (1): {names[0]}: expected {shape}, got (2, 2)" in text


def test_a_safetensors_file_of_unrelated_tensors_lists_what_is_missing(tmp_path):
    foreign = {"w": np.zeros(3, np.float32)}
    path = _write(tmp_path / "foreign.safetensors", foreign, tiny_config().to_json())
    with pytest.raises(ValueError, match=r"does not fit this model: missing \(\d+\): .* and \d+ "):
        MaskRCNN.from_checkpoint(path)
    path.write_bytes(save({"w": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"foreign.safetensors' holds no config"):
        MaskRCNN.from_checkpoint(path)


def test_loading_another_models_weights_into_a_model_names_the_file(model, tmp_path):
    other = MaskRCNN(tiny_config(num_classes=7)).save(tmp_path / "seven.safetensors")
    with pytest.raises(ValueError, match=r"seven.safetensors' does not fit .*misshaped \(6\)"):
        load_into(model, other)


def test_a_tensor_holding_nan_is_named(model, tmp_path):
    state = model.state_dict()
    name = "roi_heads.box_predictor.cls_score.weight"
    state[name] = np.full_like(state[name], np.nan)
    path = save_checkpoint(tmp_path / "nan.safetensors", state, model.cfg)
    with pytest.raises(ValueError, match=rf"nan.safetensors': tensor '{name}' holds NaN"):
        MaskRCNN.from_checkpoint(path)


# --- tampered config metadata ----------------------------------------------------------------

CONFIG = json.loads(tiny_config().to_json())
TAMPERED = {
    "config-not-json": ("{not json", r"holds an invalid config: config json does not parse"),
    "config-a-list": ("[1, 2]", r"holds an invalid config: config must be a dict"),
    "config-unknown-field": (
        json.dumps({**CONFIG, "bogus": 1}),
        r"invalid config: unknown MaskRCNNConfig field: 'bogus'",
    ),
    "config-bad-value": (
        json.dumps({**CONFIG, "num_classes": "seven"}),
        r"invalid config: num_classes must be an integer >= 2",
    ),
    "config-bad-backbone": (
        json.dumps({**CONFIG, "backbone": "vgg16"}),
        r"invalid config: backbone must be one of .*; got 'vgg16'",
    ),
    "config-other-num-classes": (
        json.dumps({**CONFIG, "num_classes": 7}),
        r"does not fit this model: misshaped \(6\): roi_heads.box_predictor",
    ),
    "config-other-width": (
        json.dumps({**CONFIG, "fpn_out_channels": 16}),
        r"does not fit this model: misshaped \(\d+\): backbone.fpn",
    ),
}


@pytest.mark.parametrize("probe", sorted(TAMPERED))
def test_tampered_config_metadata_is_named(model, tmp_path, probe):
    text, message = TAMPERED[probe]
    path = _write(tmp_path / "tampered.safetensors", model.state_dict(), text)
    with pytest.raises(ValueError, match=rf"checkpoint '.*tampered.safetensors'.* {message}"):
        MaskRCNN.from_checkpoint(path)


def test_a_resume_checkpoint_with_tampered_config_is_named(model, tmp_path):
    extra = {"step": "1", "settings": "{}", "rng": "{}"}
    text = json.dumps({**CONFIG, "num_classes": 7})
    path = _write(tmp_path / "checkpoint.safetensors", model.state_dict(), text, extra)
    with pytest.raises(ValueError, match=r"checkpoint.safetensors' does not fit this model"):
        load_training_state(path)


PROBES = (
    ["truncated-every-tenth", "cut-anywhere", "flipped-header-byte", "not-safetensors"]
    + ["folder", "missing-file", "unreadable-file", "another-models-file", "unrelated-tensors"]
    + ["another-models-weights-load-into", "nan-tensor", "resume-tampered-config"]
    + sorted(TAMPERED)
)
