"""Draws docs/tiling.jpg: tiled depth of the synthetic example scene, stitched by e2p_core.tiling without seams.

The predictions come from the stand-in predictor of e2p_dev.stand_in (the ray-traced scene's exact depth, normalised
per region as E2P's output is, with a random scale, shift and noise per call), not from the model: the figure shows
what the stitching does. Panels: the input; one pass at the processing resolution (128 px here), upsampled; the
tiles as predicted, each in its own scale and shift, pasted side by side; the tiles aligned to the one pass and
blended. Run: python scripts/make_tiling_figure.py [--out docs/tiling.jpg]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from e2p_core import imaging, tiling  # noqa: E402
from e2p_dev.stand_in import TruthPredictor, moved_scene, render_truth  # noqa: E402
from scripts.make_conventions_figure import compose  # noqa: E402

WIDTH, HEIGHT = 512, 384
TILE = 128
NOISE = 0.01


def gray(values: torch.Tensor) -> np.ndarray:
    return np.repeat(values.clamp(0, 1).numpy()[..., None], 3, axis=-1)


def panels(seed: int) -> list[tuple[str, np.ndarray]]:
    truth = render_truth(moved_scene(WIDTH, HEIGHT), supersample=2)
    image = truth.rgb[None]
    predictor = TruthPredictor([truth], "depth", noise=NOISE, seed=seed)
    canvas = imaging.plan_canvas(HEIGHT, WIDTH, TILE)
    small = imaging.resize(image.movedim(-1, 1), canvas.content_height, canvas.content_width, "bilinear")
    one_pass, _ = predictor(small.movedim(1, -1), tiling.Region(0, 0, HEIGHT, WIDTH))
    one_pass = imaging.resize(one_pass[:, None], HEIGHT, WIDTH, "bilinear")[0, 0]
    pasted = torch.zeros(HEIGHT, WIDTH)
    for region in tiling.plan_tiles(HEIGHT, WIDTH, TILE):
        rows = slice(region.top, region.top + region.height)
        columns = slice(region.left, region.left + region.width)
        pasted[rows, columns] = predictor(image[:, rows, columns], region)[0][0]
    stitched = tiling.predict_tiled(image, predictor, "depth", processing_resolution=TILE).prediction[0]
    return [("input (synthetic, ray-traced)", truth.rgb.numpy()),
            (f"one pass at {TILE} px, upsampled", gray(one_pass)),
            ("tiles as predicted (own scale/shift)", gray(pasted)),
            ("tiled: aligned + feathered", gray(stitched))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "tiling.jpg")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compose(panels(args.seed)).save(args.out, quality=90)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
