"""Draws docs/foreground_before_after.jpg: a soft edge put over a new background with the image's own colour and
with the estimated clean foreground colour (e2p_core.foreground), on a synthetic composite.

The subject is e2p_dev.synthetic_matte's (a soft-edged disc with hair strands 1.5 px wide, colourful, over a
saturated green), so its true colour and alpha are known; the alpha is the true one, not a prediction. Top row, from
the left: the input; image x alpha over a new background (what the `original` colour gives: the green of the old
background bleeds into the edge); the estimated foreground x alpha over the same background; the true foreground x
alpha over it, for reference. Bottom row: the same four, zoomed on the widest soft edge. Each panel names its mean
colour error over the soft pixels (0 < alpha < 1) against the true composite, in 8-bit steps; the script prints
them too. Run: python scripts/make_foreground_figure.py [--out docs/foreground_before_after.jpg]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from e2p_core.foreground import estimate_foreground  # noqa: E402
from e2p_dev.synthetic_matte import synthetic_composite  # noqa: E402
from scripts.make_conventions_figure import compose  # noqa: E402

SIZE = 240
NEW_BACKGROUND = (0.93, 0.9, 0.84)           # a light warm grey, far from the old green
ZOOM = 4                                     # the bottom row shows SIZE / ZOOM px around the widest soft edge


def over_new_background(colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """colour [H, W, 3] x alpha over NEW_BACKGROUND."""
    return alpha[..., None] * colour + (1.0 - alpha[..., None]) * torch.tensor(NEW_BACKGROUND)


def soft_error(result: torch.Tensor, truth: torch.Tensor, alpha: torch.Tensor) -> float:
    """Mean absolute colour difference over the soft pixels, in 8-bit steps."""
    soft = (alpha > 0) & (alpha < 1)
    return 255.0 * float((result - truth).abs().mean(dim=-1)[soft].mean())


def zoomed(image: torch.Tensor) -> np.ndarray:
    """The window of SIZE / ZOOM px centred on the disc's right edge, where the alpha ramp is widest (14 px),
    enlarged ZOOM times without smoothing (pixels stay visible)."""
    window = SIZE // ZOOM
    centre_x = round(0.5 * (SIZE - 1) + 0.3 * SIZE)   # synthetic_matte: the disc's radius is 0.3 of the side
    top, left = SIZE // 2 - window // 2, centre_x - window // 2
    crop = image[top:top + window, left:left + window].numpy()
    return crop.repeat(ZOOM, axis=0).repeat(ZOOM, axis=1)


def panels() -> tuple[list[tuple[str, np.ndarray]], dict[str, float]]:
    composite = synthetic_composite(SIZE, SIZE, "flat")
    alpha = composite.alpha
    estimate = estimate_foreground(composite.image[None], alpha[None]).foreground[0]
    truth = over_new_background(composite.foreground, alpha)
    image_colour = over_new_background(composite.image, alpha)
    estimated = over_new_background(estimate, alpha)
    errors = {"image x alpha": soft_error(image_colour, truth, alpha),
              "estimated": soft_error(estimated, truth, alpha)}
    columns = [("synthetic input (over green)", composite.image),
               (f"image x alpha: error {errors['image x alpha']:.1f}/255", image_colour),
               (f"estimated F x alpha: error {errors['estimated']:.1f}/255", estimated),
               ("true F x alpha (reference)", truth)]
    top = [(caption, image.clamp(0, 1).numpy()) for caption, image in columns]
    bottom = [(f"zoom x{ZOOM}", zoomed(image.clamp(0, 1))) for _, image in columns]
    return top + bottom, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "foreground_before_after.jpg")
    args = parser.parse_args(argv)
    items, errors = panels()
    rows = [compose(items[:4]), compose(items[4:])]
    sheet = Image.new("RGB", (rows[0].width, rows[0].height + rows[1].height), "white")
    sheet.paste(rows[0], (0, 0))
    sheet.paste(rows[1], (0, rows[0].height))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=88)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    for name, value in errors.items():
        print(f"mean colour error over the soft pixels, {name}: {value:.2f} (8-bit steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
