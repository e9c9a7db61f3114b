"""COCO evaluation: perfect predictions score 1, hand-computed AP, errors."""

import json

import numpy as np
import pytest
from PIL import Image

from tinymaskrcnn.data import CocoDataset, ShapesDataset, export_coco
from tinymaskrcnn.evaluate import evaluate, format_table


class ListDataset:
    """Images and targets given as lists: the smallest dataset evaluate() accepts."""

    CLASSES = ("background", "square", "disc")

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _box_item(*boxes, labels=None, size=(40, 40)):
    """An image with one ground-truth object per box, each mask filling its box."""
    masks = np.zeros((len(boxes), *size), np.uint8)
    for g, (x1, y1, x2, y2) in enumerate(boxes):
        masks[g, y1:y2, x1:x2] = 1
    labels = np.ones(len(boxes), np.int64) if labels is None else np.array(labels)
    target = {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": labels, "masks": masks}
    return np.zeros((3, *size), np.float32), target


def _prediction(boxes, labels, scores, size=(40, 40), masks=None):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    if masks is None:
        masks = np.zeros((len(boxes), 1, *size), np.float32)
        for d, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            masks[d, 0, y1:y2, x1:x2] = 1.0
    return {
        "boxes": boxes,
        "labels": np.array(labels, np.int64),
        "scores": np.array(scores, np.float32),
        "masks": masks,
    }


def _ground_truth_as_predictions(dataset):
    predictions = []
    for i in range(len(dataset)):
        _, target = dataset[i]
        g = len(target["labels"])
        predictions.append(
            {
                "boxes": target["boxes"],
                "labels": target["labels"],
                "scores": np.linspace(1.0, 0.5, g, dtype=np.float32),
                "masks": target["masks"][:, None].astype(np.float32),
            }
        )
    return predictions


# COCOeval divides by (tp + fp + eps): a perfect score comes out as 1 - 2e-16.
ONE = pytest.approx(1.0, abs=1e-12)


def _assert_perfect(result):
    for iou_type in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75"):
            assert result[iou_type][key] == ONE, (iou_type, key)
        assert all(ap == ONE for ap in result[iou_type]["per_class"].values())


def test_ground_truth_given_as_predictions_scores_ap_one_on_shapes():
    ds = ShapesDataset(12, seed=5)
    result = evaluate(_ground_truth_as_predictions(ds), ds)
    _assert_perfect(result)
    assert set(result["segm"]["per_class"]) == {"square", "circle", "triangle"}


def test_ground_truth_given_as_predictions_scores_ap_one_on_a_coco_file(tmp_path):
    ds = CocoDataset(export_coco(ShapesDataset(6, image_size=(64, 96), seed=2), tmp_path))
    _assert_perfect(evaluate(_ground_truth_as_predictions(ds), ds))


def _polygon_file(tmp_path, annotations):
    """A COCO file with one 40 x 40 image and the category 1 "square"."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "height": 40, "width": 40}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": annotations,
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    return CocoDataset(tmp_path / "a.json")


def test_a_detection_on_a_crowd_region_is_not_a_false_positive(tmp_path):
    # COCOeval matches a detection left unmatched by ordinary objects to a crowd region
    # and then ignores it: the higher-scored crowd detection costs nothing.
    person = {
        "id": 1,
        "image_id": 7,
        "category_id": 1,
        "bbox": [0, 0, 10, 10],
        "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
        "iscrowd": 0,
    }
    crowd = {
        "id": 2,
        "image_id": 7,
        "category_id": 1,
        "bbox": [20, 20, 20, 20],
        "segmentation": [[20, 20, 40, 20, 40, 40, 20, 40]],
        "iscrowd": 1,
    }
    ds = _polygon_file(tmp_path, [person, crowd])
    prediction = _prediction([[22, 22, 38, 38], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])
    result = evaluate([prediction], ds)
    assert result["bbox"]["AP"] == ONE and result["segm"]["AP"] == ONE


def test_polygon_ground_truth_without_area_fields_is_scored(tmp_path):
    annotation = {
        "id": 1,
        "image_id": 7,
        "category_id": 1,
        "bbox": [4, 4, 12, 12],
        "segmentation": [[4, 4, 16, 4, 16, 16, 4, 16]],
    }
    ds = _polygon_file(tmp_path, [annotation])
    result = evaluate([_prediction([[4, 4, 16, 16]], [1], [0.9])], ds)
    assert result["segm"]["AP"] == ONE and result["bbox"]["APs"] == ONE


def test_no_detections_score_zero():
    ds = ListDataset([_box_item((5, 5, 25, 25))])
    result = evaluate([_prediction([], [], [])], ds)
    assert result["bbox"]["AP"] == 0.0 and result["segm"]["AP50"] == 0.0


def test_a_box_at_iou_0_62_counts_at_thresholds_0_50_to_0_60_only():
    # gt 10 x 10, prediction 10 x 6.2 inside it: IoU 0.62 passes 0.50, 0.55, 0.60 of the
    # ten thresholds 0.50 ... 0.95, so AP = 3 / 10.
    ds = ListDataset([_box_item((0, 0, 10, 10))])
    result = evaluate([_prediction([[0, 0, 10, 6.2]], [1], [0.9])], ds, iou_types=["bbox"])
    assert result["bbox"]["AP50"] == ONE
    assert result["bbox"]["AP75"] == 0.0
    assert result["bbox"]["AP"] == pytest.approx(0.3)
    assert set(result) == {"bbox"}


def test_a_higher_scored_false_positive_halves_the_precision():
    # Ranked: a miss (precision 0 at recall 0), then the hit (precision 1/2 at recall 1);
    # interpolated precision is 1/2 at every recall point.
    ds = ListDataset([_box_item((0, 0, 10, 10))])
    prediction = _prediction([[20, 20, 30, 30], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])
    result = evaluate([prediction], ds)
    assert result["bbox"]["AP"] == pytest.approx(0.5)
    assert result["segm"]["AP"] == pytest.approx(0.5)


def test_a_right_box_with_the_wrong_label_scores_zero_for_both_classes():
    ds = ListDataset([_box_item((0, 0, 10, 10), (20, 20, 30, 30), labels=[1, 2])])
    prediction = _prediction([[0, 0, 10, 10]], [2], [0.9])
    per_class = evaluate([prediction], ds)["bbox"]["per_class"]
    assert per_class == {"square": 0.0, "disc": 0.0}


def test_masks_are_binarised_strictly_above_one_half():
    ds = ListDataset([_box_item((0, 0, 10, 10))])
    masks = np.zeros((1, 1, 40, 40), np.float32)
    masks[0, 0, 0:10, 0:10] = 0.51
    masks[0, 0, 10:20, 0:10] = 0.5  # not part of the mask: IoU stays 1
    result = evaluate([_prediction([[0, 0, 10, 10]], [1], [0.9], masks=masks)], ds)
    assert result["segm"]["AP"] == ONE


def test_a_class_absent_from_the_ground_truth_has_no_ap_and_empty_ranges_give_none():
    ds = ListDataset([_box_item((0, 0, 10, 10))])
    result = evaluate([_prediction([[0, 0, 10, 10]], [1], [0.9])], ds)
    assert result["bbox"]["per_class"] == {"square": ONE, "disc": None}
    assert result["bbox"]["APs"] == ONE  # a 10 x 10 box is "small" (< 32 x 32)
    assert result["bbox"]["APm"] is None and result["bbox"]["APl"] is None


def test_evaluation_is_silent_unless_verbose(capsys):
    ds = ListDataset([_box_item((0, 0, 10, 10))])
    predictions = [_prediction([[0, 0, 10, 10]], [1], [0.9])]
    evaluate(predictions, ds)
    assert capsys.readouterr().out == ""
    evaluate(predictions, ds, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("predictions", "kwargs", "message"),
    [
        ([], {}, r"one dict per dataset image \(1\); got 0"),
        (
            [_prediction([[0, 0, 5, 5]], [3], [0.9])],
            {},
            r"predictions\[0\]: label 3 is no category",
        ),
        ([{"boxes": np.zeros((0, 4)), "labels": [], "scores": []}], {}, r"predictions\[0\].*masks"),
        ([_prediction([[0, 0, 5, 5]], [1], [0.9], size=(20, 40))], {}, r"masks must be .*40, 40"),
        ([_prediction([[0, 0, 5, 5]], [1], [0.9, 0.8])], {}, "scores \\(D,\\)"),
        ([_prediction([[0, 0, 5, 5]], [1], [np.nan])], {}, "must be finite"),
        ([_prediction([], [], [])], {"iou_types": ["keypoints"]}, "iou_types must be among"),
    ],
)
def test_bad_predictions_are_reported_with_their_index(predictions, kwargs, message):
    ds = ListDataset([_box_item((0, 0, 10, 10))])
    with pytest.raises(ValueError, match=message):
        evaluate(predictions, ds, **kwargs)


def test_box_only_predictions_need_no_masks():
    ds = ListDataset([_box_item((0, 0, 10, 10))])
    prediction = {"boxes": np.array([[0, 0, 10, 10]]), "labels": [1], "scores": [0.9]}
    assert evaluate([prediction], ds, iou_types=["bbox"])["bbox"]["AP"] == ONE


def test_an_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="dataset is empty"):
        evaluate([], ListDataset([]))


def test_the_table_has_a_row_per_iou_type_and_a_dash_for_missing_values():
    results = {
        "bbox": {"AP": 0.5, "AP50": 1.0, "AP75": 0.25, "per_class": {"a": 0.5, "b": None}},
        "segm": {"AP": 0.125, "AP50": 0.5, "AP75": 0.0, "per_class": {"a": 0.125, "b": None}},
    }
    assert format_table(results).splitlines() == [
        "         AP   AP50   AP75      a  b",
        "bbox  0.500  1.000  0.250  0.500  -",
        "segm  0.125  0.500  0.000  0.125  -",
    ]
