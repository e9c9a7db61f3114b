"""Class names in checkpoints: stored, read back, checked against the config, drawn."""

import json

import numpy as np
import pytest
from tiny_model import tiny_config

from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.model import MaskRCNN
from tinymaskrcnn.run_folder import CHECKPOINT, WEIGHTS
from tinymaskrcnn.train import train
from tinymaskrcnn.train_state import TrainSettings, load_training_state
from tinymaskrcnn.weights import (
    COCO_NAMES,
    check_class_names,
    load_checkpoint,
    save_checkpoint,
)

FRUIT = ("background", "apple", "pear", "plum")


def small_model(names=None):
    return MaskRCNN(tiny_config(), rng=np.random.default_rng(0), class_names=names)


def test_coco_names_are_torchvisions_91_with_background_and_gaps():
    assert len(COCO_NAMES) == 91
    assert COCO_NAMES[:3] == ("__background__", "person", "bicycle")
    assert COCO_NAMES[12] == "N/A" and COCO_NAMES[13] == "stop sign"
    assert COCO_NAMES[-1] == "toothbrush"
    assert COCO_NAMES.count("N/A") == 10  # ids 1..90 name 80 categories


def test_names_saved_with_a_model_come_back_with_it(tmp_path):
    path = small_model(FRUIT).save(tmp_path / "fruit.safetensors")
    assert MaskRCNN.from_checkpoint(path).class_names == FRUIT


def test_a_model_nobody_named_gets_numbered_classes(tmp_path):
    path = small_model().save(tmp_path / "m.safetensors")
    assert MaskRCNN.from_checkpoint(path).class_names == (
        "background",
        "class 1",
        "class 2",
        "class 3",
    )


def test_a_checkpoint_without_names_loads_with_numbered_classes(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "old.safetensors", model.state_dict(), model.cfg)
    assert "class_names" not in load_checkpoint(path)[2]
    assert MaskRCNN.from_checkpoint(path).class_names[1] == "class 1"


def test_a_checkpoint_whose_names_disagree_with_its_class_count_names_the_file(tmp_path):
    model = small_model()
    path = save_checkpoint(
        tmp_path / "odd.safetensors",
        model.state_dict(),
        None,
        {"config": model.cfg.to_json(), "class_names": json.dumps(["background", "cat"])},
    )
    with pytest.raises(ValueError, match=r"odd\.safetensors.*2 class names.*num_classes=4"):
        MaskRCNN.from_checkpoint(path)


def test_saving_names_that_disagree_with_the_config_is_refused(tmp_path):
    model = small_model()
    with pytest.raises(ValueError, match="2 class names.*num_classes=4"):
        save_checkpoint(tmp_path / "x.safetensors", {}, model.cfg, class_names=("bg", "cat"))
    assert not list(tmp_path.iterdir())


def test_a_model_refuses_names_that_are_not_strings():
    with pytest.raises(ValueError, match="list of strings"):
        small_model((0, 1, 2, 3))
    with pytest.raises(ValueError, match="list of strings"):
        check_class_names("abcd", 4)


def test_the_shipped_shapes_model_names_its_shapes():
    assert MaskRCNN.from_pretrained("shapes").class_names == ShapesDataset.CLASSES


class _Fruit:
    """Shapes images under other names: a dataset whose CLASSES the run must keep."""

    def __init__(self, classes=FRUIT):
        self.CLASSES = classes
        self._shapes = ShapesDataset(2, image_size=64, seed=5)

    def __len__(self):
        return len(self._shapes)

    def __getitem__(self, i):
        return self._shapes[i]


def _train(out, dataset, resume=False, steps=1, **cfg):
    settings = TrainSettings(steps=steps, batch_size=1, warmup_iters=0, lr=0.001)
    return train(
        tiny_config(anchor_sizes=((4,), (8,), (16,), (32,), (64,)), **cfg),
        out,
        settings,
        resume=resume,
        dataset=dataset,
        eval_dataset=False,
        backend="numpy",
        progress=False,
    )


def test_a_training_run_stores_the_datasets_names_in_both_files(tmp_path):
    _train(tmp_path, _Fruit())
    assert MaskRCNN.from_checkpoint(tmp_path / WEIGHTS).class_names == FRUIT
    model, *_ = load_training_state(tmp_path / CHECKPOINT)
    assert model.class_names == FRUIT
    _train(tmp_path, _Fruit(), resume=True, steps=2)
    assert MaskRCNN.from_checkpoint(tmp_path / WEIGHTS).class_names == FRUIT


def test_a_model_with_more_classes_than_the_dataset_numbers_the_rest(tmp_path):
    _train(tmp_path, _Fruit(), num_classes=6)
    names = MaskRCNN.from_checkpoint(tmp_path / WEIGHTS).class_names
    assert names == (*FRUIT, "class 4", "class 5")


def test_a_dataset_with_more_labels_than_the_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="labels up to 4.*num_classes=4.*num_classes=5"):
        _train(tmp_path, _Fruit((*FRUIT, "fig")))
