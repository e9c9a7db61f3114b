"""The command line's train, predict, evaluate, bench and convert-torchvision commands."""

import numpy as np
import pytest
from PIL import Image

from tinymaskrcnn.cli import main
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.train import read_log

TINY = [
    "--set", "backbone_width=0.125",
    "--set", "fpn_out_channels=8",
    "--set", "box_representation_size=16",
    "--set", "mask_layers=[8]",
    "--set", "min_size=64",
    "--set", "max_size=64",
    "--set", "anchor_sizes=[[4],[8],[16],[32],[64]]",
    "--set", "rpn_pre_nms_top_n_test=50",
    "--set", "rpn_post_nms_top_n_test=20",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["train", *TINY, "--out", str(out), "--steps", "2", "--batch-size", "1",
            "--eval-images", "2", "--no-progress", "--backend", "numpy"]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    image, _ = ShapesDataset(1, image_size=64, seed=4)[0]
    path = tmp_path_factory.mktemp("img") / "shapes.png"
    Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "command", ["train", "predict", "evaluate", "bench", "convert-torchvision"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: tinymaskrcnn " + command in capsys.readouterr().out


def test_train_writes_a_run_folder_with_log_and_evaluation(run_dir, capsys):
    assert {p.name for p in run_dir.iterdir()} >= {
        "checkpoint.safetensors",
        "model.safetensors",
        "log.csv",
        "eval.csv",
    }
    np.testing.assert_array_equal(read_log(run_dir / "log.csv")["step"], [1, 2])


def test_train_resume_continues_to_the_new_step_count(run_dir):
    assert main(["train", "--out", str(run_dir), "--resume", "--steps", "3",
                 "--eval-images", "0", "--no-progress", "--backend", "numpy"]) == 0  # fmt: skip
    np.testing.assert_array_equal(read_log(run_dir / "log.csv")["step"], [1, 2, 3])


def test_train_rejects_a_misspelt_config_field(tmp_path):
    with pytest.raises(
        SystemExit, match=r"unknown MaskRCNNConfig field: 'roi_opp' \(did you mean roi_op"
    ):
        main(["train", "--out", str(tmp_path), "--set", "roi_opp=pool"])


def test_predict_draws_the_detections(run_dir, png, tmp_path, capsys):
    out = tmp_path / "out.png"
    args = ["predict", str(png), "--out", str(out), "--checkpoint",
            str(run_dir / "model.safetensors"), "--score-thresh", "0.0"]  # fmt: skip
    assert main(args) == 0
    assert "detections with score >= 0" in capsys.readouterr().out
    assert Image.open(out).size[0] > 100


def test_predict_names_an_image_that_does_not_decode(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(SystemExit, match=r"image '.*broken\.png' does not decode"):
        main(["predict", str(bad)])


def test_predict_names_a_missing_image(tmp_path):
    with pytest.raises(SystemExit, match=r"image '.*missing\.png' does not exist"):
        main(["predict", str(tmp_path / "missing.png")])


def test_predict_names_a_truncated_checkpoint(png, tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(SystemExit, match=r"cut\.safetensors.* truncated, corrupted"):
        main(["predict", str(png), "--checkpoint", str(bad)])


def test_evaluate_prints_box_and_mask_ap(run_dir, capsys):
    args = ["evaluate", "--checkpoint", str(run_dir / "model.safetensors"),
            "--num-images", "2", "--backend", "numpy"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "bbox" in out and "segm" in out and "AP50" in out


def test_convert_names_a_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="nothing.pth does not exist"):
        main(["convert-torchvision", str(tmp_path / "nothing.pth"), str(tmp_path / "o.st")])


def test_evaluate_reads_a_coco_json(run_dir, tmp_path, capsys):
    from tinymaskrcnn.data.coco import export_coco

    json_path = export_coco(ShapesDataset(2, image_size=64, seed=8), tmp_path)
    args = ["evaluate", "--checkpoint", str(run_dir / "model.safetensors"),
            "--coco", json_path, "--backend", "numpy"]  # fmt: skip
    assert main(args) == 0
    assert "2 images of" in capsys.readouterr().out


def test_every_train_setting_is_a_documented_train_option(capsys):
    import dataclasses

    from tinymaskrcnn.train import TrainSettings

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for field in dataclasses.fields(TrainSettings):
        flag = "--" + field.name.replace("_", "-")
        assert flag in out, flag
    assert "--warmup-iters WARMUP_ITERS" in out and "steps of linear warm-up" in out
