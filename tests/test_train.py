"""Training: batches, checkpoints, exact resume, damaged files, the log, and learning."""

import numpy as np
import pytest
from tiny_model import tiny_config as shared_tiny_config

from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.model import LOSS_NAMES, MaskRCNN
from tinymaskrcnn.run_folder import CHECKPOINT, LOG, WEIGHTS, read_log
from tinymaskrcnn.train import batch_at, train
from tinymaskrcnn.train_state import TrainSettings, load_training_state


def tiny_config():
    """tiny_model's config with anchors scaled to its 64 x 64 images, so objects match."""
    return shared_tiny_config(anchor_sizes=((4,), (8,), (16,), (32,), (64,)))


def tiny_settings(**overrides):
    base = dict(steps=4, batch_size=2, lr=0.01, warmup_iters=2, milestones=(3,), seed=3)
    return TrainSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(6, image_size=64, seed=5)


def run(tmp, data, resume=False, **settings):
    return train(
        tiny_config(),
        tmp,
        tiny_settings(**settings),
        resume=resume,
        dataset=data,
        eval_dataset=False,
        backend="numpy",
        progress=False,
    )


# --- batches ---------------------------------------------------------------------------


def test_a_batch_is_a_pure_function_of_the_step(data):
    first = batch_at(data, 2, 3, seed=7)
    again = batch_at(data, 2, 3, seed=7)
    for a, b in zip(first[0], again[0], strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_epoch_of_batches_visits_every_image_once():
    ds = ShapesDataset(6, image_size=32, seed=1)
    seen = []
    for step in range(3):
        images, _ = batch_at(ds, step, 2, seed=0, hflip=False)
        seen += [next(i for i in range(6) if np.array_equal(ds[i][0], im)) for im in images]
    assert sorted(seen) == list(range(6))


def test_a_batch_may_span_two_epochs():
    ds = ShapesDataset(3, image_size=32, seed=1)
    images, targets = batch_at(ds, 1, 2, seed=0)  # positions 2 (epoch 0) and 3 (epoch 1)
    assert len(images) == len(targets) == 2


# --- settings --------------------------------------------------------------------------


def test_default_milestone_sits_at_eighty_percent_of_the_steps():
    assert TrainSettings(steps=1000).milestones == (800,)


def test_settings_reject_a_zero_batch_size():
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        TrainSettings(batch_size=0)


# --- checkpoints and resume --------------------------------------------------------------


def test_a_run_writes_checkpoint_weights_and_a_log_row_per_step(tmp_path, data):
    result = run(tmp_path, data)
    assert result.step == 4 and not result.interrupted
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / WEIGHTS).exists()
    log = read_log(tmp_path / LOG)
    np.testing.assert_array_equal(log["step"], [1, 2, 3, 4])
    for name in LOSS_NAMES:
        assert np.isfinite(log[name]).all()


def test_training_checkpoint_restores_weights_optimizer_step_and_rng(tmp_path, data):
    result = run(tmp_path, data)
    model, optimizer, step, settings = load_training_state(tmp_path / CHECKPOINT)
    assert step == 4 and optimizer.iteration == 4 and settings == tiny_settings()
    for name, value in result.model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value, err_msg=name)
    assert model.rng.bit_generator.state == result.model.rng.bit_generator.state


def test_resuming_halfway_gives_bit_identical_parameters(tmp_path, data):
    straight = run(tmp_path / "straight", data).model.state_dict()
    run(tmp_path / "split", data, steps=2)
    resumed = run(tmp_path / "split", data, resume=True, steps=4)
    assert resumed.step == 4
    for name, value in resumed.model.state_dict().items():
        np.testing.assert_array_equal(value, straight[name], err_msg=name)
    np.testing.assert_array_equal(read_log(tmp_path / "split" / LOG)["step"], [1, 2, 3, 4])


def test_the_weights_file_loads_as_a_model(tmp_path, data):
    result = run(tmp_path, data, steps=1)
    for path in (tmp_path / WEIGHTS, tmp_path / CHECKPOINT):
        model = MaskRCNN.from_checkpoint(path)
        assert not model.training
        np.testing.assert_array_equal(
            model.state_dict()["rpn.head.cls_logits.weight"],
            result.model.state_dict()["rpn.head.cls_logits.weight"],
        )


def test_a_truncated_checkpoint_is_a_clear_error_naming_the_file(tmp_path, data):
    run(tmp_path, data, steps=1)
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint\.safetensors.* truncated"):
        load_training_state(path)


def test_a_corrupted_checkpoint_is_a_clear_error_naming_the_file(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=r"garbage\.safetensors.* corrupted"):
        MaskRCNN.from_checkpoint(path)


def test_resuming_from_a_weights_only_file_says_it_cannot(tmp_path, data):
    run(tmp_path, data, steps=1)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_training_state(tmp_path / WEIGHTS)


def test_a_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_training_state(tmp_path / "nowhere.safetensors")


def test_starting_over_an_existing_run_is_refused(tmp_path, data):
    run(tmp_path, data, steps=1)
    with pytest.raises(ValueError, match="already holds a run"):
        run(tmp_path, data, steps=1)


def test_ctrl_c_keeps_the_last_checkpoint_intact(tmp_path, data, monkeypatch):
    run(tmp_path, data, steps=2)
    before = (tmp_path / CHECKPOINT).read_bytes()
    calls = {"n": 0}
    real_backward = MaskRCNN.backward

    def interrupted_backward(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_backward(self)

    monkeypatch.setattr(MaskRCNN, "backward", interrupted_backward)
    result = run(tmp_path, data, resume=True, steps=8, checkpoint_every=100)
    assert result.interrupted and result.step == 3
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert load_training_state(tmp_path / CHECKPOINT)[2] == 2


# --- learning ----------------------------------------------------------------------------


def test_a_few_steps_on_one_batch_lower_the_loss(tmp_path):
    one = ShapesDataset(2, image_size=64, seed=9)
    train(
        tiny_config(),
        tmp_path,
        TrainSettings(steps=12, batch_size=2, lr=0.02, warmup_iters=0, milestones=(), hflip=False),
        dataset=one,
        eval_dataset=False,
        backend="numba",
        progress=False,
    )
    total = read_log(tmp_path / LOG)["loss"]
    assert total[-3:].mean() < 0.7 * total[:3].mean()


def test_a_half_precision_export_loads_back_within_float16_rounding(tmp_path, data):
    from tinymaskrcnn.train_state import export_weights

    result = run(tmp_path, data, steps=1)
    path = export_weights(tmp_path / CHECKPOINT, tmp_path / "half.safetensors")
    model = MaskRCNN.from_checkpoint(path)
    for name, value in result.model.state_dict().items():
        loaded = model.state_dict()[name]
        assert loaded.dtype == value.dtype
        np.testing.assert_allclose(loaded, value, rtol=1e-3, atol=1e-6, err_msg=name)


def test_the_shipped_shapes_model_finds_held_out_shapes():
    from tinymaskrcnn.kernels import use_backend
    from tinymaskrcnn.train import evaluate_model

    model = MaskRCNN.from_pretrained("shapes")
    with use_backend("numba"):
        metrics = evaluate_model(model, ShapesDataset(30, seed=12345))
    assert metrics["bbox"]["AP50"] >= 0.9 and metrics["segm"]["AP50"] >= 0.9


@pytest.mark.slow
def test_the_shapes_recipe_reaches_ap50_of_0_9_from_scratch(tmp_path):
    # The shipped model's command, `tinymaskrcnn train --config shapes` (about 20 minutes
    # at one thread on a 2-core CPU), scored on the 200 held-out images.
    result = train(MaskRCNNConfig.shapes(), tmp_path, TrainSettings(), progress=False)
    assert result.metrics["bbox"]["AP50"] >= 0.9
    assert result.metrics["segm"]["AP50"] >= 0.9
