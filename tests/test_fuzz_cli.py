"""Fuzzing the command line: every subcommand given a missing file, an unreadable image,
an output path it cannot write or a nonsense option value prints one line naming the
command and what was wrong and exits non-zero -- never a traceback.

docs/errors.md lists each probe (the ``PROBES`` ids below) and what it gets.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinymaskrcnn.atomic_file import write_atomically
from tinymaskrcnn.cli import main
from tinymaskrcnn.data.images import read_image

FAST = ["--backend", "numpy"]
QUICK_TRAIN = ["--steps", "1", "--train-images", "1", "--eval-images", "0", "--no-progress"]


@pytest.fixture()
def files(tmp_path):
    png = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(png)
    (tmp_path / "plain").write_text("a regular file, not a folder")
    return tmp_path


def _fails(argv, message):
    """Run the CLI: it must exit (status 1) with one line naming the command and
    matching ``message`` (commands.fail's ``sys.exit(text)``)."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    code = caught.value.code
    assert isinstance(code, str) and "\n" not in code, code
    assert code.startswith(f"tinymaskrcnn {argv[0]}: "), code
    assert caught.match(message)


# --- missing or wrong files, per subcommand --------------------------------------------------

MISSING = {
    "predict-missing-image": (["predict", "{d}/nope.png"], r"image '.*nope.png' does not exist"),
    "predict-folder-as-image": (["predict", "{d}"], r"is a folder, not an image file"),
    "predict-missing-checkpoint": (
        ["predict", "{d}/photo.png", "--checkpoint", "{d}/nope.safetensors"],
        r"checkpoint '.*nope.safetensors' does not exist",
    ),
    "predict-folder-as-checkpoint": (
        ["predict", "{d}/photo.png", "--checkpoint", "{d}"],
        r"is a folder, not a safetensors file",
    ),
    "predict-text-as-checkpoint": (
        ["predict", "{d}/photo.png", "--checkpoint", "{d}/plain"],
        r"'.*plain' is truncated, corrupted or not a safetensors file",
    ),
    "evaluate-missing-coco": (
        ["evaluate", "--coco", "{d}/nope.json"],
        r"COCO annotation file .*nope.json does not exist",
    ),
    "evaluate-missing-checkpoint": (
        ["evaluate", "--checkpoint", "{d}/nope.safetensors"],
        r"checkpoint '.*nope.safetensors' does not exist",
    ),
    "evaluate-text-as-coco": (["evaluate", "--coco", "{d}/plain"], r"plain: not valid JSON"),
    "train-missing-coco": (
        ["train", "--out", "{d}/run", "--coco", "{d}/nope.json"],
        r"COCO annotation file .*nope.json does not exist",
    ),
    "train-resume-without-checkpoint": (
        ["train", "--out", "{d}/run", "--resume"],
        r"checkpoint '.*run/checkpoint.safetensors' does not exist",
    ),
    "convert-missing-pth": (
        ["convert-torchvision", "{d}/nope.pth", "{d}/out.safetensors"],
        r"nope.pth does not exist",
    ),
    "convert-folder-as-pth": (
        ["convert-torchvision", "{d}", "{d}/out.safetensors"],
        r"is a folder, not a .pth file",
    ),
}


@pytest.mark.parametrize("probe", sorted(MISSING))
def test_a_missing_or_wrong_file_is_one_line_naming_it(files, probe):
    argv, message = MISSING[probe]
    _fails([a.format(d=files) for a in argv], message)


@pytest.mark.parametrize("case", ["nope.npz", "", "plain"], ids=["missing", "folder", "text"])
def test_check_says_a_bad_case_file_is_bad_input_with_status_2(files, case, capsys):
    assert main(["check", str(files / case)]) == 2
    out = capsys.readouterr()
    assert str(files / case).rstrip("/") in out.out + out.err


def test_a_checkpoint_failure_is_one_line_without_a_traceback_in_a_real_process(files):
    result = subprocess.run(
        [sys.executable, "-m", "tinymaskrcnn.cli", "predict", str(files / "photo.png")]
        + ["--checkpoint", str(files)],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tinymaskrcnn predict: checkpoint {str(files)!r} is a folder, not a safetensors file"
    ]
    assert "Traceback" not in result.stderr


# --- output paths that cannot be written ---------------------------------------------------


def test_predict_output_under_a_regular_file_is_named(files):
    _fails(
        ["predict", str(files / "photo.png"), "--out", str(files / "plain" / "x.png"), *FAST],
        r"cannot write '.*plain/x.png': '.*plain' is a file, not a folder",
    )


def test_an_output_that_is_a_folder_is_named_and_a_missing_folder_is_created(files):
    # What predict's figure (plotting.save), checkpoints and exports are written through.
    with pytest.raises(IsADirectoryError, match=rf"cannot write {str(files)!r}: it is a folder"):
        write_atomically(files, lambda f: f.write(b"x"))
    out = write_atomically(files / "new" / "deeper" / "det.png", lambda f: f.write(b"x"))
    assert open(out, "rb").read() == b"x"


@pytest.mark.parametrize("command", ["train", "tour"])
def test_a_run_or_figure_folder_under_a_regular_file_is_named(files, command):
    argv = [command, "--out", str(files / "plain" / "sub")]
    argv += QUICK_TRAIN if command == "train" else ["--backend", "numpy"]
    _fails(argv, r"Not a directory: .*plain/sub|plain' is a file, not a folder")


def test_a_read_only_output_folder_is_named(files):
    locked = files / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip(
                "running as root: a read-only folder is still writable here (the folder "
                "under a regular file probes the same error path)"
            )
        _fails(
            ["predict", str(files / "photo.png"), "--out", str(locked / "x.png"), *FAST],
            r"Permission denied",
        )
    finally:
        locked.chmod(0o700)


# --- nonsense option values ------------------------------------------------------------------

NONSENSE = {
    "predict-score-thresh-2": (
        ["predict", "{d}/photo.png", "--score-thresh", "2"],
        r"--score-thresh must be a score in \[0, 1\]; got 2.0",
    ),
    "predict-score-thresh-nan": (
        ["predict", "{d}/photo.png", "--score-thresh", "nan"],
        r"--score-thresh must be a score in \[0, 1\]; got nan",
    ),
    "evaluate-num-images-0": (["evaluate", "--num-images", "0"], r"num_images must be a positive"),
    "evaluate-seed-negative": (
        ["evaluate", "--num-images", "1", "--seed", "-1"],
        r"seed must be a non-negative int",
    ),
    "train-steps-0": (["train", "--out", "{d}/r", "--steps", "0"], r"steps must be a positive"),
    "train-batch-size-0": (
        ["train", "--out", "{d}/r", "--batch-size", "0"],
        r"batch_size must be a positive integer; got 0",
    ),
    "train-lr-nan": (["train", "--out", "{d}/r", "--lr", "nan"], r"lr must be positive; got nan"),
    "train-momentum-5": (
        ["train", "--out", "{d}/r", "--momentum", "5", *QUICK_TRAIN],
        r"momentum must be in \[0, 1\); got 5.0",
    ),
    "train-weight-decay-negative": (
        ["train", "--out", "{d}/r", "--weight-decay", "-1", *QUICK_TRAIN],
        r"weight_decay must be a non-negative number; got -1.0",
    ),
    "train-gamma-negative": (
        ["train", "--out", "{d}/r", "--gamma", "-1", *QUICK_TRAIN],
        r"gamma must be a positive number; got -1.0",
    ),
    "train-milestone-negative": (
        ["train", "--out", "{d}/r", "--milestones", "-5", *QUICK_TRAIN],
        r"milestones must be steps >= 1; got \(-5,\)",
    ),
    "train-set-unknown-field": (
        ["train", "--out", "{d}/r", "--set", "nofield=3"],
        r"unknown MaskRCNNConfig field: 'nofield'",
    ),
    "train-set-without-equals": (
        ["train", "--out", "{d}/r", "--set", "xyz"],
        r"--set needs FIELD=VALUE; got 'xyz'",
    ),
    "train-set-bad-value": (
        ["train", "--out", "{d}/r", "--set", "num_classes=-2"],
        r"num_classes must be an integer >= 2",
    ),
    "tour-image-size-10": (["tour", "--image-size", "10"], r"--image-size must be at least 64"),
    "tour-seed-negative": (["tour", "--seed", "-1"], r"--seed must be a non-negative int"),
}


@pytest.mark.parametrize("probe", sorted(NONSENSE))
def test_a_nonsense_option_value_is_one_line_naming_the_option(files, probe):
    argv, message = NONSENSE[probe]
    _fails([a.format(d=files) for a in argv], message)
    assert not (files / "r" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x.png", "--score-thresh", "abc"],
        ["bench", "--backend", "nope"],
        ["train", "--steps", "many"],
        ["bogus"],
        [],
    ],
    ids=["not-a-float", "unknown-backend", "not-an-int", "unknown-command", "no-command"],
)
def test_an_option_of_the_wrong_type_is_an_argparse_error_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "error:" in capsys.readouterr().err


# --- images the CLI reads --------------------------------------------------------------------


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_a_16_bit_grey_png_is_scaled_by_65535_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 6 * 7).astype(np.uint16).reshape(6, 7)
    image = read_image(_save(tmp_path / "deep.png", ramp))
    np.testing.assert_allclose(image, np.broadcast_to(ramp / 65535, (3, 6, 7)), rtol=1e-6)


def test_grey_rgba_and_palette_images_become_rgb_in_0_1(tmp_path):
    grey = read_image(_save(tmp_path / "g.png", np.full((4, 5), 51, np.uint8)))
    np.testing.assert_allclose(grey, 0.2, rtol=1e-6)
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red: alpha is dropped
    np.testing.assert_allclose(read_image(_save(tmp_path / "a.png", rgba))[:, 0, 0], [1, 0, 0])
    palette = Image.fromarray(np.ones((4, 5), np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png")[:, 2, 3], [0, 1, 0])


def test_an_exif_rotated_jpeg_comes_out_upright(tmp_path):
    # Stored 10 x 20, left half red, right half blue; orientation 6 means "turn 90
    # degrees clockwise to view": the viewer shows 20 x 10 with red on top.
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10, 0] = 255
    stored[:, 10:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    upright = read_image(path)
    assert upright.shape == (3, 20, 10)
    assert upright[0, :8].mean() > 0.9 and upright[2, 12:].mean() > 0.9
    assert read_image(path, exif_orientation=False).shape == (3, 10, 20)


def test_a_float_image_outside_0_1_is_named(tmp_path):
    path = tmp_path / "f.tiff"
    Image.fromarray(np.full((4, 5), 3.5, np.float32)).save(path)
    with pytest.raises(ValueError, match=r"f.tiff' is a float image with values outside"):
        read_image(path)


@pytest.mark.parametrize("keep", [0.0, 0.2, 0.6, 0.9])
def test_predict_names_a_truncated_png(files, keep):
    data = (files / "photo.png").read_bytes()
    (files / "cut.png").write_bytes(data[: int(keep * len(data))])
    _fails(["predict", str(files / "cut.png"), *FAST], r"'.*cut.png' does not decode as an image")


def test_predict_runs_on_a_16_bit_png(files, capsys):
    # The conversions themselves are read_image's (above); this is the command end to end.
    pixels = np.random.default_rng(1).integers(0, 65536, (40, 36)).astype(np.uint16)
    path = _save(files / "deep.png", pixels)
    out = files / "det.png"
    assert main(["predict", str(path), "--out", str(out), *FAST]) == 0
    assert "detections with score >=" in capsys.readouterr().out
    assert Image.open(out).format == "PNG"


PROBES = (
    sorted(MISSING)
    + ["check-bad-case-file", "one-line-in-a-real-process"]
    + ["predict-out-under-a-file", "out-is-a-folder-or-missing-folder"]
    + ["train-or-tour-out-under-a-file", "read-only-output-folder"]
    + sorted(NONSENSE)
    + ["option-of-the-wrong-type"]
    + ["16-bit-grey-png", "grey-rgba-palette", "exif-rotated-jpeg", "float-image-outside-0-1"]
    + ["truncated-png", "predict-16-bit-png"]
)
