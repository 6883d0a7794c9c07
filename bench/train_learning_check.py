"""Learning check for the trainer (issue 5, criterion 3): does a short run actually learn depth?

A tiny FLUX.1-Kontext-shaped model is trained with the trainer's default recipe (flow matching + curriculum
consistency loss, fp32 on CPU; the whole transformer, or with ``--mode lora`` an official-layout LoRA) on the
synthetic depth scenes of ``train.data.synthetic`` (generic format), then held-out scenes are predicted with the
official single step and scored with the paper's depth metrics (sqrt-space prediction, least-squares scale/shift,
AbsRel and delta1 from ``e2p_eval``). Printed: the trained model against the same model untrained and against a
constant-depth prediction.

The 12B FLUX ae cannot be used on a CPU, and a random tiny autoencoder cannot represent images, so a tiny
autoencoder is first fitted (plain reconstruction, a few hundred steps) to the training images and depth targets;
it stays frozen during the actual training, as the real VAE does.

    python bench/train_learning_check.py [--train-steps 300] [--work-dir /tmp/e2p_learning_check]
    python bench/train_learning_check.py --mode lora --learning-rate 1e-3     # rank 64 / alpha 64 on the fused layers
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from e2p_core.saved_conditioning import save_conditioning  # noqa: E402
from e2p_core.metadata_keys import META_PROMPT, META_TASK  # noqa: E402
from e2p_core.tasks import task_spec

RESOLUTION = 64


def make_data(work: Path, train_count: int, val_count: int, seed: int) -> tuple[Path, Path]:
    from train.data.synthetic import write_dataset

    root = work / "scenes"
    train_manifest = root / "manifest_train.json"
    val_manifest = root / "manifest_val.json"
    if not train_manifest.exists():
        write_dataset(root, "generic", train_count, width=RESOLUTION, height=RESOLUTION, seed=seed, split="train",
                      supersample=2)
    if not val_manifest.exists():
        write_dataset(root, "generic", val_count, width=RESOLUTION, height=RESOLUTION, seed=seed, split="val",
                      supersample=2)
    return train_manifest, val_manifest


def fit_autoencoder(dataset, steps: int, seed: int):
    """A tiny FLUX-layout AutoencoderKL fitted to reconstruct the images and the depth targets."""
    from e2p_dev.tiny_models import build_tiny_vae

    autoencoder = build_tiny_vae(channels=32, seed=seed)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        picks = torch.randint(0, len(dataset), (4,), generator=generator).tolist()
        samples = [dataset[i] for i in picks]
        images = torch.stack([s["image"] for s in samples] + [s["target"] for s in samples])
        posterior = autoencoder.encode(images).latent_dist
        reconstruction = autoencoder.decode(posterior.mean).sample
        loss = torch.nn.functional.mse_loss(reconstruction, images) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"  autoencoder step {step + 1}/{steps}: reconstruction MSE {loss.item():.4f}", flush=True)
    return autoencoder.eval()


def evaluate(models, dataset, cond, pooled) -> dict[str, float]:
    from train.validation import predict_decoded, sample_metrics

    rows = []
    for index in range(len(dataset)):
        sample = dataset[index]
        decoded = predict_decoded(models, models.denoiser, sample, cond, pooled, "depth")
        result = sample_metrics("depth", decoded, sample)
        if result is not None:
            rows.append(result)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"images": len(rows)}


def constant_baseline(dataset) -> dict[str, float]:
    from train.validation import sample_metrics

    rows = []
    for index in range(len(dataset)):
        sample = dataset[index]
        result = sample_metrics("depth", torch.zeros(3, RESOLUTION, RESOLUTION), sample)
        if result is not None:
            rows.append(result)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"images": len(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/e2p_learning_check"))
    parser.add_argument("--train-count", type=int, default=48)
    parser.add_argument("--val-count", type=int, default=12)
    parser.add_argument("--autoencoder-steps", type=int, default=400)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=("full", "lora"), default="full")
    parser.add_argument("--lora-rank", type=int, default=64, help="LoRA rank (alpha = rank, as officially)")
    args = parser.parse_args()

    from e2p_dev.tiny_models import TinyFluxSpec, build_tiny_transformer, save_tiny_models
    from train import data
    from train.config import TrainConfig
    from train.assembly import build_models
    from train.records import LOSS_LOG, read_jsonl
    from train.train import run

    torch.manual_seed(args.seed)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train_manifest, val_manifest = make_data(work, args.train_count, args.val_count, args.seed)
    spec = lambda manifest: [{"format": "generic", "manifest": str(manifest), "task": "depth"}]  # noqa: E731
    train_set = data.build_dataset(spec(train_manifest), resolution=RESOLUTION, seed=args.seed)
    val_set = data.build_dataset(spec(val_manifest), resolution=RESOLUTION, seed=args.seed)

    base = work / "base"
    if not (base / "model_index.json").exists():
        print("fitting the tiny autoencoder ...", flush=True)
        autoencoder = fit_autoencoder(train_set, args.autoencoder_steps, args.seed)
        save_tiny_models(str(base), build_tiny_transformer(TinyFluxSpec(depth=2, single_depth=2), args.seed),
                         autoencoder)
    generator = torch.Generator().manual_seed(args.seed)
    cond, pooled = torch.randn(1, 8, 64, generator=generator), torch.randn(1, 768, generator=generator)
    conditioning = work / "conditioning-depth.safetensors"
    save_conditioning(str(conditioning), cond, pooled, {META_TASK: "depth", META_PROMPT: task_spec("depth").prompt})

    output = work / f"run-{int(time.time())}"
    config = TrainConfig(task="depth", output_dir=str(output), base_model=str(base), conditioning=str(conditioning),
                         mode=args.mode, lora_rank=args.lora_rank, lora_alpha=args.lora_rank, mixed_precision="no",
                         gradient_checkpointing=False, batch_size=4,
                         learning_rate=args.learning_rate, epochs=10_000, max_steps=args.train_steps, num_workers=0,
                         checkpoint_every=args.train_steps, validate_every=args.train_steps, log_every=50,
                         resolution=RESOLUTION, seed=args.seed, progress_bar=False)
    untrained = build_models(config, "cpu")
    untrained.denoiser.eval()
    before = evaluate(untrained, val_set, cond, pooled)
    del untrained
    print(f"training {args.train_steps} steps ...", flush=True)
    run(config, train_dataset=train_set, collate_fn=data.collate)
    from train.weights import load_trained

    _, trained = load_trained(str(output))
    after = evaluate(trained, val_set, cond, pooled)
    constant = constant_baseline(val_set)
    losses = read_jsonl(str(output / "logs" / LOSS_LOG))

    print()
    print(f"mode {args.mode}" + (f" (official-layout LoRA, rank {args.lora_rank}, alpha {args.lora_rank}, "
                                 f"{sum(p.numel() for _, p in trained.trainable)} adapter parameters)"
                                 if args.mode == "lora" else "") + f", learning rate {args.learning_rate:g}")
    print(f"held-out synthetic depth, {before['images']} images at {RESOLUTION}x{RESOLUTION}, one-step prediction, "
          "scale/shift aligned in sqrt space")
    print(f"{'prediction':<28}{'AbsRel':>10}{'delta1':>10}")
    for name, scores in (("constant depth", constant), ("untrained model", before),
                         (f"trained ({args.train_steps} steps)", after)):
        print(f"{name:<28}{scores['abs_rel']:>10.4f}{scores['delta1']:>10.4f}")
    for term in ("flow", "consistency"):
        print(f"{term} loss: first 10 steps {np.mean([r[term] for r in losses[:10]]):.4f}, last 10 steps "
              f"{np.mean([r[term] for r in losses[-10:]]):.4f}")
    print(f"total time {time.time() - started:.0f} s (the curriculum total grows with lambda by design)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
