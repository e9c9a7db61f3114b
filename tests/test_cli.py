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
