"""The ``tinymaskrcnn`` command line: help texts and the tour's figures."""

import pytest

from tinymaskrcnn.cli import main


def test_help_lists_the_tour(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "tour" in capsys.readouterr().out


def test_tour_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["tour", "--help"])
    out = capsys.readouterr().out
    for option in ("--out", "--backend", "--seed", "--image-size"):
        assert option in out


TOUR_STAGES = (
    "transform",
    "backbone",
    "anchors",
    "matching",
    "rpn head",
    "proposals",
    "roi heads",
    "paste masks",
    "whole model",
)
TOUR_FIGURES = [
    "01_anchors.png",
    "02_matching.png",
    "03_proposals.png",
    "04_roipool_vs_roialign.png",
    "05_detections.png",
]


def test_the_tour_writes_its_figures_and_reports_each_stage(tmp_path, capsys):
    # every available backend (numpy and numba here): the stages must agree across them
    assert main(["tour", "--out", str(tmp_path), "--backend", "all"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip() for line in out.splitlines()}
    for stage in TOUR_STAGES:
        assert stage in rows
    assert "DISAGREE" not in out
    assert sorted(p.name for p in tmp_path.glob("*.png")) == TOUR_FIGURES


def test_the_tour_without_the_shipped_model_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setattr("tinymaskrcnn.model.PRETRAINED", {"shapes": "missing.safetensors"})
    with pytest.raises(SystemExit, match="tinymaskrcnn train"):
        main(["tour", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("*.png"))


def test_the_tour_rejects_a_tiny_image(tmp_path):
    with pytest.raises(SystemExit, match="--image-size must be at least 64"):
        main(["tour", "--out", str(tmp_path), "--image-size", "16"])


def test_an_unknown_backend_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["tour", "--backend", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


# --- the tour on a photograph ---------------------------------------------------------


@pytest.fixture(scope="module")
def photo_and_checkpoint(tmp_path_factory):
    """A 112 x 80 photo of shapes and a tiny named model (untrained: the tour must cope
    with whatever it detects)."""
    import numpy as np
    from PIL import Image
    from tiny_model import tiny_config

    from tinymaskrcnn.data.shapes import ShapesDataset
    from tinymaskrcnn.model import MaskRCNN

    folder = tmp_path_factory.mktemp("photo")
    image, _ = ShapesDataset(1, image_size=112, seed=2)[0]
    pixels = (image[:, 16:96].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(folder / "photo.jpg")
    names = ("background", "square", "circle", "triangle")
    model = MaskRCNN(tiny_config(), rng=np.random.default_rng(0), class_names=names)
    return folder / "photo.jpg", model.save(folder / "tiny.safetensors")


def test_the_tour_on_a_photo_writes_every_figure_and_reports_each_stage(
    photo_and_checkpoint, tmp_path, capsys
):
    photo, checkpoint = photo_and_checkpoint
    args = ["tour", "--image", str(photo), "--checkpoint", checkpoint, "--out", str(tmp_path)]
    assert main([*args, "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "photo.jpg (112x80)" in out and "best of 1 run" in out
    rows = {line.split("  ")[0].strip() for line in out.splitlines()}
    assert set(TOUR_STAGES) <= rows
    assert sorted(p.name for p in tmp_path.glob("*.png")) == TOUR_FIGURES


def test_the_tour_names_a_photo_that_does_not_exist(tmp_path):
    with pytest.raises(SystemExit, match="tinymaskrcnn tour: image .*nothere.jpg.* does not exist"):
        main(["tour", "--image", str(tmp_path / "nothere.jpg"), "--out", str(tmp_path)])


def test_the_tour_names_a_photo_pillow_cannot_read(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(SystemExit, match="notes.png.*does not decode"):
        main(["tour", "--image", str(bad), "--out", str(tmp_path)])
    assert list(tmp_path.glob("*.png")) == [bad]  # no figure written


def test_the_tour_names_a_missing_checkpoint(photo_and_checkpoint, tmp_path):
    photo, _ = photo_and_checkpoint
    missing = str(tmp_path / "gone.safetensors")
    with pytest.raises(SystemExit, match="gone.safetensors.*does not exist"):
        main(["tour", "--image", str(photo), "--checkpoint", missing, "--out", str(tmp_path)])


def test_a_checkpoint_without_a_photo_is_refused(photo_and_checkpoint, tmp_path):
    _, checkpoint = photo_and_checkpoint
    with pytest.raises(SystemExit, match="--checkpoint needs --image"):
        main(["tour", "--checkpoint", checkpoint, "--out", str(tmp_path)])
