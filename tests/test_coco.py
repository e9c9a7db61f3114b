"""COCO-format data: reading polygons and RLE, the export round trip, bad records."""

import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tinymaskrcnn.data import CocoDataset, CocoFormatError, ShapesDataset, export_coco

# --- a small hand-written COCO file ------------------------------------------------


def _write_png(path, height, width, mode="RGB", value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = {"RGB": (height, width, 3), "L": (height, width)}[mode]
    Image.fromarray(np.full(channels, value, np.uint8), mode).save(path)


def _square_polygon(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _annotation(id, image_id=1, category_id=1, bbox=(2, 2, 4, 4), segmentation=None, **extra):
    if segmentation is None:
        x, y, w, h = bbox
        segmentation = _square_polygon(x, y, x + w, y + h)
    return {
        "id": id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "segmentation": segmentation,
        "iscrowd": 0,
        **extra,
    }


def _coco_file(tmp_path, annotations=None, images=None, categories=None, pngs=True):
    images = (
        images
        if images is not None
        else [
            {"id": 1, "file_name": "a.png", "height": 8, "width": 10},
            {"id": 5, "file_name": "b.png", "height": 6, "width": 6},
        ]
    )
    categories = (
        categories
        if categories is not None
        else [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    )
    annotations = annotations if annotations is not None else [_annotation(1)]
    if pngs:
        for record in images:
            _write_png(tmp_path / "images" / record["file_name"], record["height"], record["width"])
    path = tmp_path / "annotations.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def test_a_polygon_decodes_to_the_pixels_it_encloses(tmp_path):
    ds = CocoDataset(_coco_file(tmp_path))
    image, target = ds[0]
    expected = np.zeros((8, 10), np.uint8)
    expected[2:6, 2:6] = 1  # the square [2, 6) x [2, 6)
    np.testing.assert_array_equal(target["masks"][0], expected)
    np.testing.assert_array_equal(target["boxes"], [[2, 2, 6, 6]])
    np.testing.assert_array_equal(target["labels"], [1])
    assert image.shape == (3, 8, 10) and image.dtype == np.float32


def test_uncompressed_and_compressed_rle_decode_to_the_same_mask(tmp_path):
    # Column-major runs over the 6 x 6 image: 14 zeros, 2 ones, 4 zeros, 2 ones, 14 zeros
    # -> pixels (2, 2), (3, 2), (2, 3), (3, 3).
    counts = [14, 2, 4, 2, 14]
    plain = {"size": [6, 6], "counts": counts}
    from pycocotools import mask as mask_utils

    packed = mask_utils.frPyObjects(plain, 6, 6)
    packed = {"size": [6, 6], "counts": packed["counts"].decode()}
    annotations = [
        _annotation(1, image_id=5, bbox=(2, 2, 2, 2), segmentation=plain),
        _annotation(2, image_id=5, bbox=(2, 2, 2, 2), segmentation=packed),
    ]
    _, target = CocoDataset(_coco_file(tmp_path, annotations))[1]
    expected = np.zeros((6, 6), np.uint8)
    expected[2:4, 2:4] = 1
    np.testing.assert_array_equal(target["masks"], [expected, expected])


def test_labels_are_category_ids_and_class_names_leave_gaps(tmp_path):
    ds = CocoDataset(_coco_file(tmp_path, [_annotation(1, category_id=3)]))
    assert ds.CLASSES == ("background", "cat", "N/A", "dog")
    np.testing.assert_array_equal(ds[0][1]["labels"], [3])
    assert ds.image_ids == [1, 5]


def test_crowd_regions_stay_out_of_the_targets(tmp_path):
    annotations = [_annotation(1), _annotation(2, bbox=(0, 0, 3, 3), iscrowd=1)]
    _, target = CocoDataset(_coco_file(tmp_path, annotations))[0]
    assert len(target["labels"]) == 1


def test_an_image_without_annotations_gives_empty_targets_of_the_right_shape(tmp_path):
    _, target = CocoDataset(_coco_file(tmp_path))[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == np.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == np.int64
    assert target["masks"].shape == (0, 6, 6) and target["masks"].dtype == np.uint8


def test_a_grey_image_is_read_as_rgb(tmp_path):
    path = _coco_file(tmp_path)
    _write_png(tmp_path / "images" / "a.png", 8, 10, mode="L", value=51)
    image, _ = CocoDataset(path)[0]
    assert image.shape == (3, 8, 10)
    np.testing.assert_allclose(image, 0.2, rtol=1e-6)


# --- the export round trip ---------------------------------------------------------


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_exporting_shapes_then_loading_gives_the_same_images_and_annotations(tmp_path, size):
    shapes = ShapesDataset(5, image_size=size, seed=11)
    loaded = CocoDataset(export_coco(shapes, tmp_path))
    assert len(loaded) == 5
    assert loaded.CLASSES == ShapesDataset.CLASSES
    for i in range(5):
        (image, target), (image2, target2) = shapes[i], loaded[i]
        np.testing.assert_array_equal(image2, image)
        for key in ("boxes", "labels", "masks"):
            np.testing.assert_array_equal(target2[key], target[key])
            assert target2[key].dtype == target[key].dtype


@given(
    seed=st.integers(0, 2**31),
    size=st.tuples(st.integers(32, 72), st.integers(32, 72)),
    rotate=st.booleans(),
)
def test_the_round_trip_holds_for_any_seed_and_image_size(seed, size, rotate):
    shapes = ShapesDataset(2, image_size=size, seed=seed, rotate=rotate)
    with tempfile.TemporaryDirectory() as out_dir:
        loaded = CocoDataset(export_coco(shapes, out_dir))
        for i in range(2):
            np.testing.assert_array_equal(loaded[i][0], shapes[i][0])
            for key in ("boxes", "labels", "masks"):
                np.testing.assert_array_equal(loaded[i][1][key], shapes[i][1][key])


def test_exporting_a_coco_dataset_again_keeps_its_image_ids_and_categories(tmp_path):
    first = CocoDataset(_coco_file(tmp_path / "a", [_annotation(1, category_id=3)]))
    second = CocoDataset(export_coco(first, tmp_path / "b"))
    assert second.image_ids == [1, 5]
    assert second.CLASSES == first.CLASSES
    for i in range(2):
        for key in ("boxes", "labels", "masks"):
            np.testing.assert_array_equal(second[i][1][key], first[i][1][key])


def test_the_export_leaves_no_temporary_files(tmp_path):
    export_coco(ShapesDataset(2, image_size=32), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["annotations.json", "images"]
    assert sorted(os.listdir(tmp_path / "images")) == ["000000.png", "000001.png"]


def test_exporting_an_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="dataset is empty"):
        export_coco([], tmp_path)


def test_exporting_a_label_without_a_category_names_the_record(tmp_path):
    class OneImage:
        CLASSES = ("background", "square")

        def __len__(self):
            return 1

        def __getitem__(self, i):
            masks = np.ones((1, 4, 4), np.uint8)
            return np.zeros((3, 4, 4), np.float32), {
                "boxes": np.array([[0, 0, 4, 4]], np.float32),
                "labels": np.array([2]),
                "masks": masks,
            }

    with pytest.raises(ValueError, match=r"dataset\[0\]: label 2 names no category"):
        export_coco(OneImage(), tmp_path)
    assert not (tmp_path / "annotations.json").exists()


# --- bad input: each error names the file and the record ---------------------------


def test_a_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json does not exist"):
        CocoDataset(tmp_path / "nothere.json")


def test_a_file_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{'images': ")
    with pytest.raises(CocoFormatError, match="bad.json: not valid JSON"):
        CocoDataset(path)


def test_a_file_without_images_is_an_empty_dataset_error(tmp_path):
    with pytest.raises(CocoFormatError, match="annotations.json: the dataset is empty"):
        CocoDataset(_coco_file(tmp_path, [], images=[]))


def test_a_missing_image_file_names_the_file_and_the_record(tmp_path):
    path = _coco_file(tmp_path)
    os.remove(tmp_path / "images" / "b.png")
    with pytest.raises(FileNotFoundError, match=r"images\[1\] \(id 5\): image file .*b.png"):
        CocoDataset(path)


def test_an_image_that_does_not_decode_names_the_file_and_the_record(tmp_path):
    path = _coco_file(tmp_path)
    (tmp_path / "images" / "b.png").write_bytes(b"not a png at all")
    ds = CocoDataset(path)
    ds[0]
    with pytest.raises(CocoFormatError, match=r"images\[1\] \(id 5\): .*b.png'? does not decode"):
        ds[1]


def test_an_image_of_another_size_than_its_record_is_an_error(tmp_path):
    path = _coco_file(tmp_path)
    _write_png(tmp_path / "images" / "a.png", 9, 10)
    with pytest.raises(CocoFormatError, match=r"images\[0\] \(id 1\).*is 9 x 10.*says 8 x 10"):
        CocoDataset(path)[0]


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (_annotation(4, image_id=9), r"annotations\[1\] \(id 4\): refers to unknown image id 9"),
        (_annotation(4, category_id=2), "refers to unknown category id 2"),
        (_annotation(4, segmentation=[[0, 0, 14, 0, 14, 4]]), "polygon 0 reaches .*outside"),
        (_annotation(4, segmentation=[[0, 0, 4, 0]]), "polygon 0 must be a flat list"),
        (_annotation(4, bbox=(8, 0, 5, 3)), "bbox .* lies outside its 8 x 10"),
        (_annotation(4, bbox=(2, 2, 0, 3)), "bbox width and height must be positive"),
        (_annotation(4, bbox=(2, 2, 3), segmentation=[[2, 2, 4, 2, 4, 4]]), "bbox must be 4"),
        (_annotation(1), "duplicate annotation id 1"),
        (_annotation(4, segmentation={"size": [6, 6], "counts": "0"}), "RLE size"),
        (_annotation(4, segmentation={"size": [8, 10], "counts": [3, 3]}), "sum"),
        ({"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, "'segmentation'"),
        (_annotation("x"), r"field 'id' must be a int"),
    ],
)
def test_a_bad_annotation_is_reported_with_its_file_and_index(tmp_path, annotation, message):
    path = _coco_file(tmp_path, [_annotation(1), annotation])
    with pytest.raises(CocoFormatError, match=message) as caught:
        CocoDataset(path)
    assert "annotations.json: annotations[1]" in str(caught.value)


def test_a_polygon_one_pixel_past_the_border_is_accepted(tmp_path):
    # Annotation tools round: up to SLACK (1 px) outside the image is tolerated.
    annotation = _annotation(2, bbox=(0, 0, 10, 8), segmentation=[[-0.5, 0, 10.8, 0, 10.8, 8.9]])
    CocoDataset(_coco_file(tmp_path, [annotation]))


def test_duplicate_image_ids_are_an_error(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}] * 2
    with pytest.raises(CocoFormatError, match=r"images\[1\] \(id 1\): duplicate image id 1"):
        CocoDataset(_coco_file(tmp_path, [], images=images))


def test_two_categories_of_one_name_are_an_error(tmp_path):
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}]
    with pytest.raises(CocoFormatError, match=r"categories\[1\] \(id 2\): duplicate .* 'cat'"):
        CocoDataset(_coco_file(tmp_path, [], categories=categories))


def test_category_id_zero_is_reserved_for_the_background(tmp_path):
    with pytest.raises(CocoFormatError, match=r"categories\[0\] \(id 0\).*0 is the background"):
        CocoDataset(_coco_file(tmp_path, [], categories=[{"id": 0, "name": "x"}]))
