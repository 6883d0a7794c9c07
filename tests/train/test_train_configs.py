"""One shipped config per released checkpoint, each what its official script really ran, the
paper's curriculum as its own config, and the side-by-side table in docs/training.md.

The expected values are the official scripts' arguments (scripts/Kontext_*.sh of showlab/Edit2Perceive) with the
parser defaults of models/utils.py (height/width 768, weight decay 0.01, ConstantLR), written out here.
"""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPTH_MIX = [0.9, 0.1]
NORMAL_MIX = [0.5, 0.45, 0.05]
MATTING_MIX = [0.22, 0.22, 0.30, 0.26]

# config: (script, mode, [H, W], batch, lr, optimiser, epochs, objective, consistency, timesteps, mixing weights)
OFFICIAL = {
    "depth_full.yaml": ("Kontext_depth.sh", "full", [768, 768], 4, 1e-5, "adamw8bit", 8, "consistency_only",
                        "released", "official", DEPTH_MIX),
    "depth_lora.yaml": ("Kontext_depth_lora.sh", "lora", [512, 768], 2, 3e-6, "adamw", 8, "flow_only", None,
                        "official", DEPTH_MIX),
    "normal_full.yaml": ("Kontext_normal.sh", "full", [512, 768], 16, 1e-4, "adamw", 8, "flow_only", None,
                         "official", NORMAL_MIX),
    "normal_lora.yaml": ("Kontext_normal_lora.sh", "lora", [768, 768], 8, 1e-5, "adamw8bit", 8, "flow_only", None,
                         "official", NORMAL_MIX),
    "normal_lora_zero.yaml": ("Kontext_normal_lora_zero.sh", "lora", [512, 768], 8, 1e-4, "adamw8bit", 8,
                              "consistency_only", "released", "deterministic", NORMAL_MIX),
    "matting_full.yaml": ("Kontext_matting3.sh", "full", [512, 512], 16, 1e-5, "adamw8bit", 30, "consistency_only",
                          "released", "official", MATTING_MIX),
    "matting_lora.yaml": ("Kontext_matting3_lora.sh", "lora", [512, 512], 4, 1e-5, "adamw8bit", 30,
                          "consistency_only", "released", "official", MATTING_MIX),
}


def load(name):
    from train import config as config_module

    return config_module.load(os.path.join(REPO, "train", "configs", name))


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_config_is_what_the_official_script_ran(name):
    from train.data.targets import parse_resolution

    _, mode, size, batch, lr, optimiser, epochs, objective, consistency, timesteps, mix = OFFICIAL[name]
    config = load(name)
    assert config.mode == mode and list(parse_resolution(config.resolution)) == size
    assert config.batch_size == batch and config.learning_rate == pytest.approx(lr, rel=1e-12)
    assert config.optimizer == optimiser and config.epochs == epochs
    assert config.objective == objective and config.timesteps == timesteps
    if consistency is not None:
        assert config.consistency == consistency
    assert [d["weight"] for d in config.train_data] == mix
    assert config.multi_res_noise and config.noise == "fixed_seed"           # every script passes --multi_res_noise
    assert config.weight_decay == 0.01 and config.adam_betas == (0.9, 0.999) and config.max_grad_norm is None
    assert config.lr_start_factor == pytest.approx(1 / 3, rel=1e-15) and config.lr_start_steps == 5
    assert config.warmup_steps == 0 and config.ema_decay is None and config.gradient_accumulation_steps == 1
    assert config.mixed_precision == "bf16" and config.gradient_checkpointing
    assert config.time_embedding == "bf16_frequencies"
    if mode == "lora":
        assert config.lora_rank == 64 and config.lora_alpha == 64


def test_curriculum_recipe_is_its_own_config():
    config = load("depth_curriculum.yaml")
    assert config.objective == "curriculum" and config.consistency == "paper"
    assert config.lambda_start_epoch == 0 and config.lambda_per_epoch == 1.0 and config.lambda_normalize
    assert not any(load(name).objective == "curriculum" for name in OFFICIAL)


def test_constant_lr_start_matches_torch_constant_lr():
    """The official scheduler is torch's ConstantLR with its defaults (factor 1/3 for 5 steps)."""
    import torch

    from train.assembly import build_scheduler

    config = load("depth_lora.yaml")
    ours = build_scheduler(config, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate))
    official_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    official = torch.optim.lr_scheduler.ConstantLR(official_optimizer)
    for _ in range(8):
        assert ours.get_last_lr()[0] == pytest.approx(official.get_last_lr()[0], rel=1e-12)
        ours.optimizer.step()
        official_optimizer.step()
        ours.step()
        official.step()


def test_docs_table_lists_every_config_beside_its_script():
    with open(os.path.join(REPO, "docs", "training.md"), encoding="utf-8") as handle:
        text = handle.read()
    header = next(line for line in text.splitlines() if line.startswith("| hyperparameter |"))
    for name, facts in OFFICIAL.items():
        assert f"`{name}`" in header
        assert facts[0] in text
    assert "`depth_curriculum.yaml`" in header
