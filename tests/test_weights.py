import os

import numpy as np
import pytest

from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.weights import (
    compare_state_dicts,
    load_checkpoint,
    new_key,
    save_checkpoint,
    upgrade_state_dict,
)

PAIRS = [
    ("backbone.fpn.inner_blocks.0.weight", "backbone.fpn.inner_blocks.0.0.weight"),
    ("backbone.fpn.inner_blocks.3.bias", "backbone.fpn.inner_blocks.3.0.bias"),
    ("backbone.fpn.layer_blocks.2.weight", "backbone.fpn.layer_blocks.2.0.weight"),
    ("rpn.head.conv.weight", "rpn.head.conv.0.0.weight"),
    ("rpn.head.conv.bias", "rpn.head.conv.0.0.bias"),
    ("roi_heads.mask_head.mask_fcn1.weight", "roi_heads.mask_head.0.0.weight"),
    ("roi_heads.mask_head.mask_fcn4.bias", "roi_heads.mask_head.3.0.bias"),
]
UNCHANGED = [
    "backbone.body.layer1.0.conv1.weight",
    "rpn.head.cls_logits.weight",
    "roi_heads.box_head.fc6.weight",
    "roi_heads.mask_predictor.conv5_mask.weight",
]


def small_state(rng=None):
    rng = rng or np.random.default_rng(0)
    return {
        "backbone.body.conv1.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "backbone.body.bn1.running_var": np.ones(4, np.float32),
        "backbone.body.bn1.num_batches_tracked": np.array(7, np.int64),
        "rpn.head.conv.0.0.weight": rng.normal(size=(4, 4, 3, 3)).astype(np.float32),
        "roi_heads.box_predictor.cls_score.bias": np.zeros(5, np.float32),
    }


@pytest.mark.parametrize("old, new", PAIRS)
def test_old_keys_map_to_torchvisions_current_names(old, new):
    assert new_key(old) == new
    assert new_key(new) == new
    assert upgrade_state_dict({old: 1}) == {new: 1}
    # a bare module's keys (no path before them) are renamed the same way
    assert new_key(old.split(".", 2)[-1]) == new.split(".", 2)[-1]


@pytest.mark.parametrize("name", UNCHANGED)
def test_keys_that_never_changed_are_left_alone(name):
    assert new_key(name) == name


def test_batch_norm_step_counters_are_dropped_only_where_the_model_has_none():
    state = {"a.num_batches_tracked": np.array(3), "b.num_batches_tracked": np.array(1)}
    kept = upgrade_state_dict(state, {"b.num_batches_tracked"})
    assert list(kept) == ["b.num_batches_tracked"]


def test_a_key_the_module_expects_is_never_renamed():
    # "conv.weight" is an old RPN-head key, but a module whose conv is a bare Conv2d has it.
    assert upgrade_state_dict({"conv.weight": 1}, {"conv.weight"}) == {"conv.weight": 1}
    assert upgrade_state_dict({"conv.weight": 1}, {"conv.0.0.weight"}) == {"conv.0.0.weight": 1}


def test_a_state_dict_mixing_both_spellings_of_a_key_is_an_error():
    state = {"rpn.head.conv.weight": np.zeros(2), "rpn.head.conv.0.0.weight": np.zeros(2)}
    with pytest.raises(ValueError, match="both"):
        upgrade_state_dict(state)


def test_save_then_load_gives_back_the_arrays_and_the_config(tmp_path):
    state = small_state()
    cfg = MaskRCNNConfig.shapes(num_classes=5)
    path = save_checkpoint(tmp_path / "m.safetensors", state, cfg, {"step": 12})
    loaded, config, meta = load_checkpoint(path)
    assert config == cfg and meta["step"] == "12"
    assert set(loaded) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(loaded[k], v)
        assert loaded[k].dtype == v.dtype


def test_old_generation_keys_load_under_the_new_names(tmp_path):
    state = {old: np.full(2, i, np.float32) for i, (old, _) in enumerate(PAIRS)}
    loaded, config, _ = load_checkpoint(save_checkpoint(tmp_path / "old.safetensors", state))
    assert config is None
    assert sorted(loaded) == sorted(new for _, new in PAIRS)


def test_saving_leaves_no_temporary_file_behind(tmp_path):
    save_checkpoint(tmp_path / "m.safetensors", small_state())
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", small_state())
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupted or not a safetensors file"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_bytes(b"hello, this is not a checkpoint")
    with pytest.raises(ValueError, match="notes.safetensors.*not a safetensors file"):
        load_checkpoint(path)


def test_a_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        load_checkpoint(tmp_path / "nothere.safetensors")


def test_compare_lists_missing_unexpected_and_misshaped_names():
    expected = {"a": np.zeros((2, 3)), "b": np.zeros(4), "c": np.zeros(1)}
    given = {"a": np.zeros((3, 2)), "b": np.zeros(4), "d": np.zeros(1)}
    diff = compare_state_dicts(expected, given)
    assert diff == {
        "missing": ["c"],
        "unexpected": ["d"],
        "misshaped": ["a: expected (2, 3), got (3, 2)"],
    }


def test_loading_into_a_model_lists_the_names_that_do_not_fit(tmp_path):
    from tinymaskrcnn.masks import MaskRCNNHeads
    from tinymaskrcnn.weights import load_into

    head = MaskRCNNHeads(3, (4, 4), rng=np.random.default_rng(0))
    state = head.state_dict()
    state["0.0.weight"] = np.zeros((4, 3, 5, 5), np.float32)
    state["extra.bias"] = np.zeros(2, np.float32)
    del state["1.0.bias"]
    path = save_checkpoint(tmp_path / "bad.safetensors", state)
    with pytest.raises(ValueError) as err:
        load_into(MaskRCNNHeads(3, (4, 4), rng=np.random.default_rng(1)), path)
    message = str(err.value)
    assert "missing (1): 1.0.bias" in message
    assert "unexpected (1): extra.bias" in message
    assert "0.0.weight: expected (4, 3, 3, 3), got (4, 3, 5, 5)" in message


def test_loading_a_checkpoint_into_a_model_copies_its_weights(tmp_path):
    from tinymaskrcnn.masks import MaskRCNNHeads
    from tinymaskrcnn.weights import load_into

    source = MaskRCNNHeads(3, (4, 4), rng=np.random.default_rng(0))
    path = save_checkpoint(tmp_path / "head.safetensors", source.state_dict())
    target = MaskRCNNHeads(3, (4, 4), rng=np.random.default_rng(1))
    assert load_into(target, path) is None  # no config stored
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[k], v)
