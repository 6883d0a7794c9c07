"""Draws docs/conventions.jpg (and the pack icon docs/icon.png): the three outputs' conventions on a synthetic scene.

The released 12B weights are not available where this repository is built and tested, so the figure shows the
output conventions (sqrt depth near = dark, disparity near = bright, BAE normal colours, alpha) computed from a
ray-traced scene's true geometry with the same `e2p_core.representations` code the nodes use, not predictions.
Run: python scripts/make_conventions_figure.py [--out docs/conventions.jpg]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from e2p_core import representations as rep  # noqa: E402
from train.data.synthetic import random_scene  # noqa: E402

PANEL = 256
CAPTION_HEIGHT = 22


def panels(seed: int) -> list[tuple[str, np.ndarray]]:
    scene = random_scene(np.random.default_rng(seed), PANEL, PANEL)
    truth = scene.render(supersample=2)
    depth = torch.from_numpy(truth["depth"]).float()
    valid = depth > 0
    sqrt_depth = (rep.encode_depth(depth, valid) + 1.0) / 2.0
    # sqrt_depth 0 and 1 stand for the 2nd and 98th percentile depths; decoding with those gives true disparity
    # (up to the clamp outside that range).
    roots = torch.sqrt(depth[valid])
    near, far = (float(rep.percentile(roots, q)) ** 2 for q in (rep.DEPTH_LOW_PERCENTILE, rep.DEPTH_HIGH_PERCENTILE))
    disparity = rep.sqrt_depth_to_disparity(sqrt_depth[None], near=near, far=far)[0]
    native = rep.marigold_to_native_normals(torch.from_numpy(truth["normals"]).float())
    normal_rgb = torch.where(valid[..., None], rep.normals_to_rgb(native), torch.zeros(3))
    gray = lambda values: np.repeat(values.clamp(0, 1).numpy()[..., None], 3, axis=-1)  # noqa: E731
    return [
        ("input (synthetic)", truth["rgb"].astype(np.float32) / 255.0),
        ("E2P Depth: sqrt, near dark", gray(sqrt_depth)),
        ("SqrtDecode: disparity", gray(disparity)),
        ("E2P Normal: BAE colours", normal_rgb.numpy()),
        ("E2P Matting: alpha", gray(torch.from_numpy(truth["alpha"]).float())),
    ]


def compose(items: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Captioned panels side by side; every image [H, W, 3] in [0, 1] of one size."""
    height, width = items[0][1].shape[:2]
    sheet = Image.new("RGB", (width * len(items), height + CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for column, (caption, image) in enumerate(items):
        tile = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
        sheet.paste(tile, (column * width, CAPTION_HEIGHT))
        draw.text((column * width + 6, 5), caption, fill="black")
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "conventions.jpg")
    parser.add_argument("--icon", type=Path, default=REPO_ROOT / "docs" / "icon.png")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
    items = panels(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compose(items).save(args.out, quality=90)
    normal_panel = dict(items)["E2P Normal: BAE colours"]
    icon = Image.fromarray(np.round(normal_panel * 255).astype(np.uint8)).resize((128, 128), Image.LANCZOS)
    icon.save(args.icon)
    print(f"wrote {args.out} and {args.icon}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
