"""Time whole-model inference, ours against torchvision's MaskRCNN with identical weights.

    python benchmarks/inference.py            # shapes 128 x 128, then R50-FPN 800 x 1216
    python benchmarks/inference.py --quick    # shapes only

Two models, one image each, eval mode, float32, detections with pasted masks:

1. shapes: the shipped shapes model (``MaskRCNN.from_pretrained("shapes")``; seeded
   weights if this checkout has none) on a held-out 128 x 128 shapes image;
2. R50-FPN: ``MaskRCNNConfig()`` (91 classes, frozen batch norm) on an 800 x 1216 shapes
   scene (no resize: the short side is already 800), with the seeded weights of the
   model parity fixture (tests/fixtures/gen_model.py ``model_state``: heads scaled so
   that scores spread and the mask head runs on real detections).

torchvision's twin of each (``torchvision_twin.py``) gets the same weights by name and
runs in a child process with the same thread count (``--threads``, default 2; Numba's
and torch's OpenMP settings must not share a process, see benchmarks/backbone.py).
Times are medians (and bests) of ``--repeats`` runs after a warm-up; the ratio is
torchvision's time over ours (above 1: we are faster). The detection counts of both are
printed as a check that they did the same work. Without torch only our numbers appear.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import median_time  # noqa: E402  benchmarks/timing.py, beside this script (no numpy)


def _set_threads(n: int) -> None:
    # OpenBLAS and OpenMP read these when first loaded: set them before numpy is imported.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def cases(quick):
    """name -> (config, state dict, image (3, H, W) float32)."""
    import numpy as np

    from tinymaskrcnn.config import MaskRCNNConfig
    from tinymaskrcnn.data.shapes import ShapesDataset
    from tinymaskrcnn.model import MaskRCNN

    try:
        shapes = MaskRCNN.from_pretrained("shapes")
    except (FileNotFoundError, ValueError):
        shapes = MaskRCNN(MaskRCNNConfig.shapes())
    image, _ = ShapesDataset(1, image_size=128, seed=12345)[0]
    out = {"shapes 128 x 128": (shapes.cfg, shapes.state_dict(), image)}
    if not quick:
        cfg = MaskRCNNConfig()
        spec = importlib.util.spec_from_file_location(
            "gen_model", ROOT / "tests" / "fixtures" / "gen_model.py"
        )
        gen_model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gen_model)
        shapes_of = {k: v.shape for k, v in MaskRCNN(cfg).state_dict().items()}
        state = gen_model.model_state(shapes_of)
        image, _ = ShapesDataset(1, image_size=(800, 1216), seed=12345)[0]
        out["R50-FPN 800 x 1216"] = (cfg, state, image.astype(np.float32))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the shapes model only")
    parser.add_argument("--threads", type=int, default=2, help="threads for BLAS, Numba, torch")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model")
    parser.add_argument("--torchvision-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _set_threads(args.threads)
    if args.torchvision_only:
        return torchvision_inference(args)
    child_env = dict(os.environ)  # torch keeps its own OpenMP defaults
    # What kernels/__init__.py sets before the first kernel loads, needed here because
    # numba.get_num_threads() below starts Numba's OpenMP workers first: with GNU
    # OpenMP's default (spinning) policy every step runs ~10x slower on 2 cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import numba
    import numpy as np

    from tinymaskrcnn.kernels import use_backend
    from tinymaskrcnn.model import MaskRCNN

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; threads {args.threads} "
        f"(numba {numba.get_num_threads()}, BLAS, torch); python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}; median of {args.repeats}"
    )
    ours = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (cfg, state, image)) in enumerate(cases(args.quick).items()):
            model = MaskRCNN(cfg)
            model.load_state_dict(state)
            model.eval()
            with use_backend("numba"):
                t, best = median_time(lambda m=model, x=image: m([x]), args.repeats)
                (det,) = model([image])
            ours[name] = (t, best, len(det["boxes"]))
            print(f"  {name}: tinymaskrcnn numba median {t * 1e3:8.1f} ms, "
                  f"best {best * 1e3:8.1f} ms, {len(det['boxes'])} detections")  # fmt: skip
            np.savez(os.path.join(tmp, f"case{i}.npz"), image=image, **state)
            with open(os.path.join(tmp, f"case{i}.json"), "w") as f:
                f.write(cfg.to_json())
            del model
        cmd = [sys.executable, __file__, "--torchvision-only", tmp]
        cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"  torchvision not run ({last}): our numbers only")
            return 0
        for i, name in enumerate(ours):
            result = np.load(os.path.join(tmp, f"tv{i}.npz"))
            t_tv, best_tv = result["time"]
            t, best, n_ours = ours[name]
            print(f"  {name}: torchvision CPU median {t_tv * 1e3:8.1f} ms, "
                  f"best {best_tv * 1e3:8.1f} ms, {int(result['detections'])} detections "
                  f"(torch {result['version']})")  # fmt: skip
            print(f"  {name}: ratio torchvision / ours {t_tv / t:.2f}x median, "
                  f"{best_tv / best:.2f}x best")  # fmt: skip
    return 0


def torchvision_inference(args):
    """Child process: time the torchvision twin of every case saved in args.torchvision_only."""
    import numpy as np
    import torch
    from torchvision_twin import load_ours, torchvision_twin

    from tinymaskrcnn.config import MaskRCNNConfig

    torch.set_num_threads(args.threads)
    folder = pathlib.Path(args.torchvision_only)
    i = 0
    while (folder / f"case{i}.npz").exists():
        cfg = MaskRCNNConfig.from_json((folder / f"case{i}.json").read_text())
        saved = dict(np.load(folder / f"case{i}.npz"))
        image = torch.from_numpy(saved.pop("image"))
        twin = torchvision_twin(cfg)
        load_ours(twin, saved)
        twin.eval()
        with torch.no_grad():
            t = np.array(median_time(lambda tw=twin, x=image: tw([x]), args.repeats))
            (det,) = twin([image])
        np.savez(folder / f"tv{i}.npz", time=t, detections=len(det["boxes"]),
                 version=torch.__version__)  # fmt: skip
        i += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
