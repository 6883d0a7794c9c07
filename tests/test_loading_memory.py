"""Loading streams a checkpoint into the model (one memory mapping of the file at a time, none left behind), and
loaders of one base file share its FLUX weights while any of them is held, without keeping them alive, and
ComfyUI's partial loading (--novram) predicts what a full load does.

How much memory that saves is measured by bench/load_memory.py; these tests pin the mechanism."""

import gc
import os
import weakref

import pytest
import torch

from e2p_dev import tiny_models as tm
from e2p_core.comfyui import compat, loader, sampling

pytestmark = pytest.mark.usefixtures("comfy_inprocess")


def mappings_of(path: str) -> int:
    """How many memory mappings of ``path`` this process holds now."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip("\n").endswith(" " + real))


def predict(e2p) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    reference = torch.randn(1, 16, 8, 8, generator=generator)
    cond, pooled = tm.conditioning()
    with torch.inference_mode():
        return sampling.predict_latent(e2p.patcher, [reference], cond, pooled, seed=42)


@pytest.fixture
def base_and_loras(tmp_path):
    bfl = tm.bfl_state_dict(seed=81)
    base = tm.write(str(tmp_path / "flux1-kontext-dev.safetensors"), bfl)
    loras = [tm.write(str(tmp_path / f"{task}_lora.safetensors"), tm.kohya_lora(tm.lora_pairs(bfl, seed=seed)))
             for seed, task in enumerate(("depth", "normal", "matting"), start=82)]
    return base, loras


@pytest.mark.parametrize("layout", ["bfl", "diffsynth", "diffusers"])
def test_checkpoint_is_streamed_one_tensor_at_a_time(tmp_path, monkeypatch, layout):
    bfl = tm.bfl_state_dict(seed=80)
    path = tm.write(str(tmp_path / "e2p.safetensors"), tm.in_layout(bfl, layout))
    mapped_while_reading = []
    stream = loader.stream_safetensors

    def watched(file, groups):
        for tensors in stream(file, groups):
            mapped_while_reading.append(mappings_of(file))
            yield tensors

    monkeypatch.setattr(loader, "stream_safetensors", watched)
    e2p = loader.load_e2p_checkpoint(path, "fp32")
    assert len(mapped_while_reading) == len(bfl), "every BFL tensor is read on its own"
    assert max(mapped_while_reading) == 1, "a tensor's mapping stayed open while the next one was read"
    assert mappings_of(path) == 0, "the loaded model still refers to the file"
    weights = e2p.patcher.model.diffusion_model.state_dict()
    model_keys = compat.flux_key_renames(e2p.patcher.model.model_config, list(bfl))
    for name, tensor in bfl.items():
        assert torch.equal(weights[model_keys[name]], tensor), name


def test_loaders_of_one_base_share_its_weights_and_keep_their_own_lora(base_and_loras):
    base, loras = base_and_loras
    expected = []
    for lora in [*loras, None]:                      # each alone, freed before the next: nothing shared
        e2p = loader.load_e2p_checkpoint(base, "fp32", lora)
        expected.append(predict(e2p))
        del e2p
        gc.collect()
    together = [loader.load_e2p_checkpoint(base, "fp32", lora) for lora in [*loras, None]]
    assert len({id(e2p.patcher.model) for e2p in together}) == 1
    assert "FLUX weights shared with the other loaders of this file" in together[1].description
    for e2p, alone in [*zip(together, expected), (together[0], expected[0])]:    # interleaved, and back again
        assert tm.scaled_error(predict(e2p), alone) <= tm.RELATIVE_TOLERANCE
    assert loader.load_e2p_checkpoint(base, "bf16").patcher.model is not together[0].patcher.model


def test_changed_file_is_loaded_anew(base_and_loras):
    base, _ = base_and_loras
    first = loader.load_e2p_checkpoint(base, "fp32")
    stat = os.stat(base)
    os.utime(base, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert loader.load_e2p_checkpoint(base, "fp32").patcher.model is not first.patcher.model


def test_shared_base_is_freed_when_no_loader_holds_it(base_and_loras):
    import comfy.model_management

    base, loras = base_and_loras
    held = [loader.load_e2p_checkpoint(base, "fp32", lora) for lora in loras[:2]]
    predict(held[0])                                  # ComfyUI's model management has seen it
    model = weakref.ref(held[0].patcher.model)
    del held
    comfy.model_management.cleanup_models()
    gc.collect()
    assert model() is None, "the FLUX weights outlived every loader that held them"
    again = loader.load_e2p_checkpoint(base, "fp32", loras[2])
    assert again.patcher.model is not None and "FLUX weights shared" not in " ".join(again.description)


def test_novram_partial_loading_matches_full_load(tmp_path, monkeypatch):
    """ComfyUI's --novram path (every weight offloaded, cast per forward, LoRA applied by LowVramPatch) gives the
    same prediction. On a CPU-only machine ComfyUI refuses --novram together with --cpu, so the test switches its
    memory state in-process: the load device is treated as a GPU with NO_VRAM."""
    import comfy.model_management as mm

    bfl = tm.bfl_state_dict(seed=73)
    pairs = tm.lora_pairs(bfl, seed=74)
    base = tm.write(str(tmp_path / "kontext.safetensors"), bfl)
    lora = tm.write(str(tmp_path / "lora.safetensors"), tm.kohya_lora(pairs))
    ref = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(9))
    cond, pooled = tm.conditioning()

    def run():
        e2p = loader.load_e2p_checkpoint(base, "fp32", lora)
        with torch.inference_mode():
            return sampling.predict_latent(e2p.patcher, [ref], cond, pooled), e2p.patcher

    full, _ = run()
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    offloaded, patcher = run()
    assert patcher.model.model_lowvram, "the model was not partially loaded"
    assert tm.scaled_error(offloaded, full) <= tm.RELATIVE_TOLERANCE
    mm.unload_all_models()
