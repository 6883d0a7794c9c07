"""The task table (e2p_core.tasks): one owner of the per-task facts (the tables above the core: test_task_tables),
and the task a file's name states."""

import pytest
import torch

from e2p_core import float_images, representations
from e2p_core.tasks import TASKS, TASK_NAMES, task_from_file_name, task_spec


def test_names_and_the_accessor():
    assert TASK_NAMES == ("depth", "normal", "matting")
    assert all(TASKS[name].name == name and task_spec(name) is TASKS[name] for name in TASK_NAMES)
    for bad in ("segmentation", "Depth", "", None):
        with pytest.raises(ValueError, match="unknown task .*use one of depth, normal, matting"):
            task_spec(bad)


def test_facts_follow_the_official_setup():
    depth, normal, matting = (task_spec(name) for name in TASK_NAMES)
    assert [spec.prompt for spec in (depth, normal, matting)] == [
        f"Transform to {word} map while maintaining original composition" for word in ("depth", "normal", "matting")]
    assert len({spec.representation for spec in TASKS.values()}) == 3
    assert [spec.output_channels for spec in (depth, normal, matting)] == [1, 3, 1]
    assert [name for name in TASK_NAMES if TASKS[name].needs_hint] == ["matting"]
    assert [name for name in TASK_NAMES if TASKS[name].uses_trimap] == ["matting"]
    assert [name for name in TASK_NAMES if TASKS[name].affine_invariant] == ["depth"]
    assert [spec.ground_truth for spec in (depth, normal, matting)] == ["depth", "normal", "alpha"]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_decode_takes_the_channel_axis(name):
    """The pipeline decodes channels-last, the trainer channels-first: the same values either way."""
    spec = task_spec(name)
    decoded = torch.rand(2, 6, 8, 3, generator=torch.Generator().manual_seed(3)) * 2.4 - 1.2
    channels_last = spec.decode(decoded)
    channels_first = spec.decode(decoded.permute(0, 3, 1, 2), channel_axis=1)
    if spec.output_channels == 1:
        assert channels_last.shape == (2, 6, 8) and torch.equal(channels_first, channels_last)
        assert channels_last.min() >= 0 and channels_last.max() <= 1
    else:
        assert channels_last.shape == (2, 6, 8, 3)
        assert torch.allclose(channels_first.permute(0, 2, 3, 1), channels_last, rtol=0, atol=1e-6)
        assert torch.allclose(channels_last.norm(dim=-1), torch.ones(2, 6, 8), atol=1e-5)


def test_after_resampling_returns_values_to_their_range():
    overshoot = torch.tensor([[-0.2, 0.5, 1.3]])
    assert torch.equal(task_spec("depth").after_resampling(overshoot), torch.tensor([[0.0, 0.5, 1.0]]))
    assert torch.equal(task_spec("matting").after_resampling(overshoot), torch.tensor([[0.0, 0.5, 1.0]]))
    blended = torch.tensor([[0.0, 0.6, 0.6]])
    assert torch.allclose(task_spec("normal").after_resampling(blended).norm(dim=-1), torch.ones(1))


def test_saved_float_contents_are_float_file_contents():
    for name in TASK_NAMES:
        spec = task_spec(name)
        conventions = representations.NORMAL_CONVENTIONS if spec.uses_normal_convention else ("controlnet_bae",)
        assert all(spec.saved_content(convention) in float_images.CONTENTS for convention in conventions)
    assert task_spec("normal").saved_content("directx") == "normals_directx"
    assert task_spec("depth").float_channels == float_images.CHANNELS_GRAY_IMAGE
    assert task_spec("matting").float_channels == float_images.CHANNELS_GRAY_MASK


def test_uncertainty_mask_scales_only_the_normal_angles():
    spread = torch.tensor([0.0, 0.25, 90.0])
    assert torch.equal(task_spec("depth").uncertainty_mask(spread), spread)
    assert torch.equal(task_spec("matting").uncertainty_mask(spread), spread)
    assert torch.allclose(task_spec("normal").uncertainty_mask(spread), spread / 180.0)


@pytest.mark.parametrize("name,expected", [
    ("depth.safetensors", "depth"), ("Edit2Perceive/NORMAL_lora.safetensors", "normal"),
    ("e2p-matting-v2.sft", "matting"), ("flux1-kontext-dev.safetensors", None),
    ("depth_to_normal.safetensors", None), ("", None),
])
def test_task_from_file_name(name, expected):
    assert task_from_file_name(name) == expected
