"""Fuzzing COCO data (data/coco.py): every malformed record is a CocoFormatError (or a
FileNotFoundError) naming the file and the record; whatever loads gives targets the
model accepts.

docs/errors.md lists each probe (the ``PROBES`` ids below) and what it gets.
"""

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from tinymaskrcnn.data import CocoDataset, CocoFormatError
from tinymaskrcnn.data.coco import compressed_rle_counts
from tinymaskrcnn.transform import check_targets

IMAGE = {"id": 1, "file_name": "a.png", "height": 8, "width": 10}
CATEGORY = {"id": 1, "name": "cat"}
ANNOTATION = {
    "id": 7,
    "image_id": 1,
    "category_id": 1,
    "bbox": [1, 1, 4, 4],
    "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
    "area": 16,
    "iscrowd": 0,
}
RLE = mask_utils.encode(np.asfortranarray(np.eye(8, 10, dtype=np.uint8)))
GOOD = {
    "images": [IMAGE],
    "categories": [CATEGORY],
    "annotations": [
        ANNOTATION,
        {
            **ANNOTATION,
            "id": 8,
            "segmentation": {"size": [8, 10], "counts": RLE["counts"].decode()},
        },
    ],
}


def _folder(tmp_path):
    (tmp_path / "images").mkdir(exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 10, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    return tmp_path


def _write(folder, coco):
    path = folder / "annotations.json"
    path.write_text(json.dumps(coco) if not isinstance(coco, str) else coco)
    return path


def _changed(section, field, value, k=0):
    coco = copy.deepcopy(GOOD)
    record = coco[section][k]
    if value is _DELETE:
        del record[field]
    else:
        record[field] = value
    return coco


_DELETE = object()

# probe id -> (the file, the record its error must name, what it must say)
RECORD_PROBES = {
    "empty-file": ("", "", r"not valid JSON"),
    "empty-object": ({}, "", r"the file needs a list 'images'"),
    "top-level-list": ([], "", r"expected a JSON object at the top level"),
    "no-images": ({**GOOD, "images": []}, "", r"the dataset is empty \(no images\)"),
    "annotations-not-a-list": ({**GOOD, "annotations": {}}, "", r"needs a list 'annotations'"),
    "image-missing-id": (
        _changed("images", "id", _DELETE),
        "images[0]",
        r"field 'id' must be a int; got None",
    ),
    "image-missing-file-name": (
        _changed("images", "file_name", _DELETE),
        "images[0] (id 1)",
        r"field 'file_name' must be a str",
    ),
    "image-missing-height": (
        _changed("images", "height", _DELETE),
        "images[0] (id 1)",
        r"field 'height' must be a int",
    ),
    "image-float-width": (
        _changed("images", "width", 10.0),
        "images[0] (id 1)",
        r"field 'width' must be a int; got 10.0",
    ),
    "image-zero-height": (
        _changed("images", "height", 0),
        "images[0] (id 1)",
        r"height and width must be positive",
    ),
    "image-duplicate-id": (
        {**GOOD, "images": [IMAGE, {**IMAGE, "file_name": "b.png"}]},
        "images[1] (id 1)",
        r"duplicate image id 1",
    ),
    "category-missing-name": (
        _changed("categories", "name", _DELETE),
        "categories[0] (id 1)",
        r"field 'name' must be a str",
    ),
    "category-duplicate-id": (
        {**GOOD, "categories": [CATEGORY, {"id": 1, "name": "dog"}]},
        "categories[1] (id 1)",
        r"duplicate category id 1",
    ),
    "category-id-zero": (
        {**GOOD, "categories": [{"id": 0, "name": "x"}]},
        "categories[0] (id 0)",
        r"0 is the background",
    ),
    "annotation-not-an-object": (
        {**GOOD, "annotations": [5]},
        "annotations[0]",
        r"expected an object; got int",
    ),
    "annotation-missing-id": (
        _changed("annotations", "id", _DELETE),
        "annotations[0]",
        r"field 'id' must be a int",
    ),
    "annotation-missing-image-id": (
        _changed("annotations", "image_id", _DELETE),
        "annotations[0] (id 7)",
        r"field 'image_id' must be a int",
    ),
    "annotation-missing-bbox": (
        _changed("annotations", "bbox", _DELETE),
        "annotations[0] (id 7)",
        r"field 'bbox' must be a list",
    ),
    "annotation-missing-segmentation": (
        _changed("annotations", "segmentation", _DELETE),
        "annotations[0] (id 7)",
        r"missing 'segmentation'",
    ),
    "annotation-duplicate-id": (
        _changed("annotations", "id", 7, k=1),
        "annotations[1] (id 7)",
        r"duplicate annotation id 7",
    ),
    "annotation-unknown-image": (
        _changed("annotations", "image_id", 3),
        "annotations[0] (id 7)",
        r"refers to unknown image id 3",
    ),
    "annotation-unknown-category": (
        _changed("annotations", "category_id", 2),
        "annotations[0] (id 7)",
        r"refers to unknown category id 2",
    ),
    "annotation-iscrowd-2": (
        _changed("annotations", "iscrowd", 2),
        "annotations[0] (id 7)",
        r"iscrowd must be 0 or 1",
    ),
    "bbox-three-numbers": (
        _changed("annotations", "bbox", [1, 1, 4]),
        "annotations[0] (id 7)",
        r"bbox must be 4 finite numbers",
    ),
    "bbox-nan": (
        _changed("annotations", "bbox", [1, 1, float("nan"), 4]),
        "annotations[0] (id 7)",
        r"bbox must be 4 finite numbers",
    ),
    "bbox-zero-width": (
        _changed("annotations", "bbox", [1, 1, 0, 4]),
        "annotations[0] (id 7)",
        r"bbox width and height must be positive",
    ),
    "bbox-outside": (
        _changed("annotations", "bbox", [8, 1, 5, 4]),
        "annotations[0] (id 7)",
        r"bbox \[8, 1, 5, 4\] lies outside its 8 x 10 \(H x W\) image",
    ),
    "polygon-too-short": (
        _changed("annotations", "segmentation", [[1, 1, 5, 1]]),
        "annotations[0] (id 7)",
        r"polygon 0 must be a flat list .* at least 3 points",
    ),
    "polygon-odd-length": (
        _changed("annotations", "segmentation", [[1, 1, 5, 1, 5, 5, 1]]),
        "annotations[0] (id 7)",
        r"polygon 0 must be a flat list",
    ),
    "polygon-nested-points": (
        _changed("annotations", "segmentation", [[[1, 1], [5, 1], [5, 5]]]),
        "annotations[0] (id 7)",
        r"polygon 0 must be a flat list",
    ),
    "polygon-strings": (
        _changed("annotations", "segmentation", [["1", 1, 5, 1, 5, 5]]),
        "annotations[0] (id 7)",
        r"polygon 0 must be a flat list",
    ),
    "polygon-outside": (
        _changed("annotations", "segmentation", [[1, 1, 25, 1, 5, 5]]),
        "annotations[0] (id 7)",
        r"polygon 0 reaches \(1\.\.25, 1\.\.5\), outside its 8 x 10",
    ),
    "segmentation-empty": (
        _changed("annotations", "segmentation", []),
        "annotations[0] (id 7)",
        r"segmentation must be a list of polygons or an RLE dict",
    ),
    "rle-wrong-size": (
        _changed("annotations", "segmentation", {"size": [4, 4], "counts": [16]}, k=1),
        "annotations[1] (id 8)",
        r"RLE size \[4, 4\] is not the image's \[8, 10\]",
    ),
    "rle-counts-wrong-sum": (
        _changed("annotations", "segmentation", {"size": [8, 10], "counts": [3, 3]}, k=1),
        "annotations[1] (id 8)",
        r"uncompressed RLE counts must be non-negative ints summing to 8 \* 10",
    ),
    "rle-compressed-wrong-size": (
        _changed("annotations", "segmentation", {"size": [8, 10], "counts": "0"}, k=1),
        "annotations[1] (id 8)",
        r"compressed RLE counts '0' do not decode to runs covering the 8 x 10 image",
    ),
    "rle-compressed-garbage": (
        _changed("annotations", "segmentation", {"size": [8, 10], "counts": "~~garbage~~"}, k=1),
        "annotations[1] (id 8)",
        r"compressed RLE counts .* do not decode",
    ),
    "rle-counts-none": (
        _changed("annotations", "segmentation", {"size": [8, 10], "counts": None}, k=1),
        "annotations[1] (id 8)",
        r"RLE counts must be a string or a list of ints",
    ),
}


@pytest.mark.parametrize("probe", sorted(RECORD_PROBES))
def test_a_malformed_record_is_a_coco_format_error_naming_it(tmp_path, probe):
    coco, record, message = RECORD_PROBES[probe]
    path = _write(_folder(tmp_path), coco)
    with pytest.raises(CocoFormatError) as caught:
        CocoDataset(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {record}"), text
    assert caught.match(message)


def test_the_good_file_loads_with_both_segmentation_kinds(tmp_path):
    ds = CocoDataset(_write(_folder(tmp_path), GOOD))
    image, target = ds[0]
    assert image.shape == (3, 8, 10) and target["masks"].shape == (2, 8, 10)
    np.testing.assert_array_equal(target["masks"][1], np.eye(8, 10))


# --- image files ---------------------------------------------------------------------------


def _with_image(tmp_path, write):
    folder = _folder(tmp_path)
    write(folder / "images" / "a.png")
    return CocoDataset(_write(folder, GOOD))


@pytest.mark.parametrize("keep", [0.0, 0.03, 0.1, 0.3, 0.5, 0.9])
def test_a_truncated_png_names_the_file_and_the_record(tmp_path, keep):
    def write(path):
        data = path.read_bytes()
        path.write_bytes(data[: int(keep * len(data))])

    ds = _with_image(tmp_path, write)
    with pytest.raises(CocoFormatError, match=r"images\[0\] \(id 1\): image '.*a.png' does not"):
        ds[0]


def test_a_png_missing_only_its_end_marker_still_reads_every_pixel(tmp_path):
    # Pillow needs no IEND chunk (12 bytes) once the pixel data is whole.
    whole = CocoDataset(_write(_folder(tmp_path), GOOD))[0][0]
    cut = _with_image(tmp_path, lambda path: path.write_bytes(path.read_bytes()[:-12]))[0][0]
    np.testing.assert_array_equal(cut, whole)


def test_a_text_file_as_image_names_the_file_and_the_record(tmp_path):
    ds = _with_image(tmp_path, lambda path: path.write_text("not an image"))
    with pytest.raises(CocoFormatError, match=r"images\[0\] \(id 1\): .*a.png' does not decode"):
        ds[0]


def test_a_missing_or_folder_image_is_a_file_not_found_error_naming_the_record(tmp_path):
    folder = _folder(tmp_path)
    (folder / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images\[0\] \(id 1\): image file .* not exist"):
        CocoDataset(_write(folder, GOOD))
    (folder / "images" / "a.png").mkdir()
    with pytest.raises(FileNotFoundError, match=r"images\[0\] \(id 1\): .* is a folder"):
        CocoDataset(_write(folder, GOOD))


@pytest.mark.parametrize(
    "mode, pixels, expected",
    [
        ("I;16", np.full((8, 10), 65535, np.uint16), 1.0),
        ("I;16", np.full((8, 10), 32768, np.uint16), 32768 / 65535),
        ("L", np.full((8, 10), 51, np.uint8), 0.2),
        ("RGBA", np.full((8, 10, 4), 102, np.uint8), 0.4),
        ("P", np.full((8, 10), 3, np.uint8), None),
    ],
)
def test_grey_16_bit_rgba_and_palette_images_are_read_as_rgb_in_0_1(
    tmp_path, mode, pixels, expected
):
    def write(path):
        pil = Image.fromarray(pixels) if mode != "P" else Image.fromarray(pixels, "P")
        if mode == "P":
            pil.putpalette([0, 0, 0] * 3 + [255, 0, 51] + [0, 0, 0] * 252)
        pil.save(path)

    image = _with_image(tmp_path, write)[0][0]
    assert image.shape == (3, 8, 10) and image.dtype == np.float32
    if expected is None:
        np.testing.assert_allclose(image[:, 0, 0], [1.0, 0.0, 0.2], rtol=1e-6)
    else:
        np.testing.assert_allclose(image, expected, rtol=1e-6)


def test_an_image_of_another_size_than_its_record_is_named(tmp_path):
    def write(path):
        Image.fromarray(np.zeros((10, 8, 3), np.uint8)).save(path)

    with pytest.raises(CocoFormatError, match=r"images\[0\] \(id 1\): .* is 10 x 8 .* says 8 x 10"):
        _with_image(tmp_path, write)[0]


# --- compressed RLE ---------------------------------------------------------------------------


@settings(max_examples=40)
@given(
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_compressed_rle_counts_are_the_runs_pycocotools_encodes(h, w, density, seed):
    mask = (np.random.default_rng(seed).random((h, w)) < density).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(mask))
    runs = compressed_rle_counts(rle["counts"].decode())
    values = np.concatenate([np.full(n, i % 2, np.uint8) for i, n in enumerate(runs)])
    np.testing.assert_array_equal(values.reshape(w, h).T, mask)  # column-major runs


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=120), max_size=12))
def test_any_compressed_rle_string_loads_as_its_exact_mask_or_is_named(tmp_path, counts):
    coco = _changed("annotations", "segmentation", {"size": [8, 10], "counts": counts}, k=1)
    path = _write(_folder(tmp_path), coco)
    try:
        ds = CocoDataset(path)
    except CocoFormatError as err:
        assert str(err).startswith(f"{path}: annotations[1] (id 8): ")
        return
    runs = compressed_rle_counts(counts)
    mask = ds[0][1]["masks"][1]
    values = np.concatenate([np.full(n, i % 2, np.uint8) for i, n in enumerate(runs)])
    np.testing.assert_array_equal(mask, values.reshape(10, 8).T)


# --- any single change to a good file -------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 12) | st.floats(-3, 12) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    where=st.sampled_from(
        [("images", 0, k) for k in IMAGE]
        + [("categories", 0, k) for k in CATEGORY]
        + [("annotations", a, k) for a in (0, 1) for k in ANNOTATION]
    ),
    value=st.just(_DELETE) | JSON_VALUES,
)
def test_any_one_changed_field_loads_as_model_ready_targets_or_is_named(tmp_path, where, value):
    section, k, field = where
    path = _write(_folder(tmp_path), _changed(section, field, value, k=k))
    try:
        ds = CocoDataset(path)
        images_targets = [ds[i] for i in range(len(ds))]
    except (CocoFormatError, FileNotFoundError) as err:
        assert str(err).startswith(f"{path}: {section}[{k}]"), str(err)
        return
    # What loads is what the model takes (the categories give num_classes).
    num_classes = len(ds.CLASSES)
    sizes = [image.shape[1:] for image, _ in images_targets]
    check_targets([t for _, t in images_targets], sizes, num_classes)


PROBES = sorted(RECORD_PROBES) + [
    "truncated-png",
    "png-without-end-marker",
    "text-file-as-image",
    "missing-or-folder-image",
    "16-bit-grey-rgba-palette-image",
    "image-size-differs-from-record",
    "compressed-rle-any-string",
    "any-one-changed-field",
]
