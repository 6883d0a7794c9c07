"""Weight files judged by their structure. A safetensors file begins with its header length, so about one valid
file in 256 begins with 0x80 (a pickle's first byte) and some with ``PK`` (a zip's): they are read like any other.
Pickles and zips are refused by their own structure and never unpickled; a damaged file gets a message that names
the damage; checkpoints whose tensors are not floating point, are missing, have the wrong shape, or whose metadata
names an unknown task are refused naming the file and the tensor."""

import copy
import io
import pickle
import re
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from e2p_core import checkpoint_layouts, safetensors_io
from e2p_core.metadata_keys import META_TASK
from e2p_core.tasks import TASK_NAMES
from e2p_dev import tiny_models as tm
from e2p_dev.weight_files import LeavesAMark, read_header, with_header, write_with_header_start

SMALL = {"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "scale": torch.ones(4, dtype=torch.bfloat16)}


# --- the file's structure (no ComfyUI) --------------------------------------------------------------------------


@pytest.mark.parametrize("start", [b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK"],
                         ids=["pickle2", "pickle3", "pickle4", "pickle5", "zip"])
def test_safetensors_that_begin_like_a_pickle_or_zip_are_read(tmp_path, start):
    path = write_with_header_start(str(tmp_path / "weights.safetensors"), SMALL, start, {META_TASK: "depth"})
    assert open(path, "rb").read(len(start)) == start
    tensors, metadata = safetensors_io.read_safetensors(path)
    assert metadata[META_TASK] == "depth"
    assert tensors.keys() == SMALL.keys() and all(torch.equal(tensors[k], v) for k, v in SMALL.items())


def test_every_first_byte_a_header_can_have_is_read(tmp_path):
    """Header lengths are multiples of 8, so a valid file begins with one of 32 bytes: each of them is read."""
    for first in range(0, 256, 8):
        path = write_with_header_start(str(tmp_path / f"{first}.safetensors"), SMALL, bytes([first]))
        tensors, _ = safetensors_io.read_safetensors(path)
        assert torch.equal(tensors["weight"], SMALL["weight"])


def test_a_null_metadata_entry_is_read(tmp_path):
    """The library reads ``"__metadata__": null`` as no metadata, so it is no damage."""
    data = save(SMALL)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(with_header(data, {**read_header(data), "__metadata__": None}))
    tensors, metadata = safetensors_io.read_safetensors(str(path))
    assert metadata == {} and torch.equal(tensors["weight"], SMALL["weight"])


def pickled(payload) -> dict[str, tuple[bytes, str]]:
    """(bytes, expected description) of every pickle-based file a user may have, each holding ``payload``."""
    made = {f"protocol{p}": (pickle.dumps(payload, protocol=p), rf"a pickle \(protocol {p}\)") for p in (2, 3, 4, 5)}
    made.update({f"protocol{p}": (pickle.dumps(payload, protocol=p), r"a pickle \(protocol 0 or 1\)") for p in (0, 1)})
    zipped, legacy = io.BytesIO(), io.BytesIO()
    torch.save(payload, zipped)
    torch.save(payload, legacy, _use_new_zipfile_serialization=False)
    made["torch_zip"] = (zipped.getvalue(), r"a PyTorch zip checkpoint \(torch.save\) holding .*data\.pkl")
    made["torch_legacy"] = (legacy.getvalue(), r"a legacy PyTorch checkpoint \(torch.save pickle\)")
    return made


@pytest.mark.parametrize("kind", ["protocol0", "protocol1", "protocol2", "protocol3", "protocol4", "protocol5",
                                  "torch_zip", "torch_legacy"])
def test_pickles_are_refused_by_their_structure_without_unpickling(tmp_path, kind):
    marker = tmp_path / "unpickled"
    data, description = pickled({"state_dict": LeavesAMark(str(marker)), "weight": torch.zeros(3)})[kind]
    path = tmp_path / "depth.safetensors"
    path.write_bytes(data)
    with pytest.raises(safetensors_io.WeightFileError, match=f"^depth.safetensors is {description}.*never unpickled"):
        safetensors_io.read_safetensors(str(path))
    assert not marker.exists()


def test_a_zip_archive_is_named(tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("depth.safetensors", save(SMALL))
    path = tmp_path / "depth.safetensors"
    path.write_bytes(archive.getvalue())
    with pytest.raises(safetensors_io.WeightFileError, match="is a zip archive, not a safetensors file: unzip it"):
        safetensors_io.read_safetensors(str(path))


def damaged_files() -> dict[str, tuple[bytes, str]]:
    """(bytes, expected message) of damaged safetensors files, each refused by the library too."""
    data = save(SMALL, {"source": "test"})
    size, header = len(data), read_header(data)

    def changed(edit):
        edited = copy.deepcopy(header)
        edit(edited)
        return with_header(data, edited)

    length = int.from_bytes(data[:8], "little")
    return {
        "truncated": (data[:-3], rf"is truncated: its data ends at byte {size} \(tensor 'scale'\) but the file has "
                                 rf"{size - 3} bytes; download it again"),
        "header_cut": (data[:40], rf"is truncated: its header says {length} bytes of JSON follow the first "
                                  r"8 but the file has 40 bytes in all"),
        "not_json": (data[:9] + b"!" * (length - 1) + data[8 + length:], r"its header is not valid JSON"),
        "not_an_object": (data[:8] + b" " * length + data[8 + length:], r"its header is not a JSON object"),
        "offsets_beyond_the_file": (changed(lambda h: h["scale"].update(shape=[400], data_offsets=[48, 848])),
                                    rf"is truncated: its data ends at byte {size - 56 + 848} \(tensor 'scale'\)"),
        "offsets_against_shape": (changed(lambda h: h["weight"].update(data_offsets=[0, 40])),
                                  r"tensor 'weight' is F32 of shape \[3, 4\] \(48 bytes\) but its data_offsets "
                                  r"\[0, 40\] span 40 bytes"),
        "overlapping": (changed(lambda h: h["scale"].update(data_offsets=[0, 8])),
                        r"tensor 'weight' starts at data offset 0 where the previous tensor ends at 8"),
        "trailing_bytes": (data + bytes(8), r"8 bytes follow its last tensor that the header does not describe"),
        "metadata": (changed(lambda h: h["__metadata__"].update(source=3)), r"__metadata__\) is not a table of texts"),
        "entry": (changed(lambda h: h["weight"].update(shape="3x4")), r"the header entry of tensor 'weight' is not"),
        "empty": (b"", r"\(0 bytes\) is not a readable safetensors file: it has only 0 bytes"),
        "random": (torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
                   .numpy().tobytes(), r"is not a readable safetensors file: its first 8 bytes give a header length"),
    }


@pytest.mark.parametrize("case", list(damaged_files()))
def test_damaged_files_name_the_damage(tmp_path, case):
    data, message = damaged_files()[case]
    path = tmp_path / "depth.safetensors"
    path.write_bytes(data)
    with pytest.raises(safetensors_io.WeightFileError, match=f"^depth.safetensors.*{message}"):
        safetensors_io.read_safetensors(str(path))
    with pytest.raises(Exception):          # what is refused here, the safetensors library refuses as well
        with safe_open(str(path), framework="pt") as handle:
            [handle.get_tensor(key) for key in handle.keys()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn,
                                   torch.float8_e5m2, torch.float64])
def test_float_weights_pass_the_dtype_check(dtype):
    safetensors_io.check_float_tensors("w.safetensors", {"a": torch.empty(2, 2, dtype=dtype, device="meta")})


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8, torch.int8, torch.int64, torch.complex64])
def test_non_float_weights_are_refused_naming_file_and_tensor(dtype):
    tensors = {"a": torch.empty(2, device="meta"), "b": torch.empty(2, dtype=dtype, device="meta")}
    name = str(dtype).replace("torch.", "")
    with pytest.raises(safetensors_io.WeightFileError,
                       match=rf"^w.safetensors: 1 of its 2 tensors are not floating point \(e.g. b is {name}\)"):
        safetensors_io.check_float_tensors("w.safetensors", tensors)


def test_comfyui_quantized_weights_are_pointed_to_comfyuis_loader():
    tensors = {"x.weight": torch.empty(2, dtype=torch.int8, device="meta"),
               "x.comfy_quant": torch.empty(2, dtype=torch.uint8, device="meta")}
    with pytest.raises(safetensors_io.WeightFileError, match="quantized in ComfyUI's own format .* UNETLoader"):
        safetensors_io.check_float_tensors("q.safetensors", tensors)


# --- checkpoints and LoRAs through the loaders (ComfyUI in-process) --------------------------------------------


@pytest.fixture(scope="module")
def loader(comfy_inprocess):
    from e2p_core.comfyui import loader

    return loader


@pytest.fixture(scope="module")
def bfl():
    return tm.bfl_state_dict(seed=91)


@pytest.fixture(scope="module")
def lora(bfl, tmp_path_factory):
    pairs = tm.lora_pairs(bfl, seed=92)
    return tm.write(str(tmp_path_factory.mktemp("lora") / "lora.safetensors"), tm.kohya_lora(pairs))


def diffusion_weight(patcher, name: str) -> torch.Tensor:
    return patcher.model.diffusion_model.state_dict()[name]


@pytest.mark.parametrize("start", [b"\x80", b"PK"], ids=["pickle_byte", "zip_bytes"])
def test_checkpoints_and_loras_that_begin_like_a_pickle_or_zip_load(loader, tmp_path, bfl, start):
    checkpoint = write_with_header_start(str(tmp_path / "e2p.safetensors"), bfl, start, {META_TASK: "depth"})
    base = write_with_header_start(str(tmp_path / "kontext.safetensors"), bfl, start)
    pairs = tm.lora_pairs(bfl, seed=93)
    lora = write_with_header_start(str(tmp_path / "e2p_lora.safetensors"), tm.kohya_lora(pairs), start,
                                   {META_TASK: "depth"})
    for path in (checkpoint, base, lora):
        assert open(path, "rb").read(len(start)) == start
    full = loader.load_e2p_checkpoint(checkpoint, "fp32")
    assert full.task == "depth" and torch.equal(diffusion_weight(full.patcher, "img_in.weight"), bfl["img_in.weight"])
    with_lora = loader.load_e2p_checkpoint(base, "fp32", lora_path=lora)
    assert with_lora.task == "depth" and any(line.startswith("LoRA") for line in with_lora.description)
    native, _ = loader.build_flux_patcher(bfl, "fp32")
    assert loader.from_native_model(native, lora_path=lora).task == "depth"


def test_a_checkpoint_missing_a_tensor_names_it(loader, tmp_path, bfl):
    """A checkpoint that lacks one tensor and begins with 0x80 (a pickle's first byte) is called incomplete, not a
    pickle."""
    incomplete = {k: v for k, v in bfl.items() if k != "double_blocks.0.img_attn.proj.bias"}
    path = write_with_header_start(str(tmp_path / "incomplete.safetensors"), incomplete, b"\x80")
    with pytest.raises(loader.E2PLoadError, match=r"^incomplete.safetensors lacks 1 tensor that a FLUX.1 Kontext "
                                                  r"transformer of its size .* has: double_blocks.0.img_attn.proj.bias;"
                                                  r" the file is incomplete \(download it again\)"):
        loader.load_e2p_checkpoint(path, "fp32")
    official = tm.in_layout(bfl, checkpoint_layouts.DIFFSYNTH, "pipe.dit.")
    del official["pipe.dit.blocks.0.ff_a.0.bias"]
    path = tm.write(str(tmp_path / "depth.safetensors"), official)
    with pytest.raises(loader.E2PLoadError, match=r"^depth.safetensors lacks 1 tensor .*: "
                                                  r"pipe.dit.blocks.0.ff_a.0.bias;"):
        loader.load_e2p_checkpoint(path, "fp32")


def test_a_wrong_tensor_shape_names_the_file_the_tensor_and_both_shapes(loader, tmp_path, bfl):
    hidden = tm.HIDDEN
    narrow = dict(bfl, **{"double_blocks.0.img_attn.proj.weight": torch.zeros(hidden, hidden // 2)})
    path = tm.write(str(tmp_path / "narrow.safetensors"), narrow)
    with pytest.raises(loader.E2PLoadError, match=re.escape(
            f"narrow.safetensors: tensor double_blocks.0.img_attn.proj.weight has shape [{hidden}, {hidden // 2}] "
            f"where a FLUX.1 Kontext transformer of this size (hidden size {hidden}, 1 double + 1 single blocks) has "
            f"[{hidden}, {hidden}]. The file is not an Edit2Perceive / FLUX.1 Kontext checkpoint of this architecture,"
            " or it is damaged")):
        loader.load_e2p_checkpoint(path, "fp32")
    official = tm.in_layout(narrow, checkpoint_layouts.DIFFSYNTH, "pipe.dit.")
    path = tm.write(str(tmp_path / "official.safetensors"), official)
    with pytest.raises(loader.E2PLoadError, match=rf"^official.safetensors: tensor pipe.dit.blocks.0.attn.a_to_out"
                                                  rf".weight has shape \[{hidden}, {hidden // 2}\]"):
        loader.load_e2p_checkpoint(path, "fp32")
    split = tm.in_layout(bfl, checkpoint_layouts.DIFFUSERS)
    split["transformer_blocks.0.attn.to_q.weight"] = torch.zeros(hidden, hidden // 2)
    path = tm.write(str(tmp_path / "diffusers.safetensors"), split)
    with pytest.raises(checkpoint_layouts.UnsupportedCheckpoint,
                       match=r"^diffusers.safetensors: the tensors joined into "
                             r"double_blocks.0.img_attn.qkv.weight do not fit together"):
        loader.load_e2p_checkpoint(path, "fp32")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8])
def test_non_float_checkpoints_are_refused_on_every_route(loader, tmp_path, bfl, lora, dtype):
    path = tm.write(str(tmp_path / "integer.safetensors"), {k: (v * 100).to(dtype) for k, v in bfl.items()})
    message = rf"^integer.safetensors: {len(bfl)} of its {len(bfl)} tensors are not floating point"
    with pytest.raises(safetensors_io.WeightFileError, match=message):
        loader.load_e2p_checkpoint(path, "fp32")
    with pytest.raises(safetensors_io.WeightFileError, match=message):      # as the base of a LoRA
        loader.load_e2p_checkpoint(path, "fp32", lora_path=lora)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16])
def test_float_checkpoints_of_every_stored_dtype_load(loader, tmp_path, bfl, dtype):
    stored = {k: v.to(dtype) for k, v in bfl.items()}
    e2p = loader.load_e2p_checkpoint(tm.write(str(tmp_path / "stored.safetensors"), stored), "fp32")
    assert torch.equal(diffusion_weight(e2p.patcher, "img_in.weight"), stored["img_in.weight"].to(torch.float32))


def test_an_unknown_task_in_the_metadata_is_named(loader, tmp_path, bfl):
    known = ", ".join(TASK_NAMES)
    message = rf"names the task 'segmentation' \(e2p.task\), which this node pack does not know \(it knows {known}\)"
    checkpoint = tm.write(str(tmp_path / "segment.safetensors"), bfl, {META_TASK: "segmentation"})
    with pytest.raises(loader.E2PLoadError, match=f"^segment.safetensors's metadata {message}"):
        loader.load_e2p_checkpoint(checkpoint, "fp32")
    base = tm.write(str(tmp_path / "kontext.safetensors"), bfl)
    lora = tm.write(str(tmp_path / "segment_lora.safetensors"), tm.kohya_lora(tm.lora_pairs(bfl, seed=94)),
                    {META_TASK: "segmentation"})
    with pytest.raises(loader.E2PLoadError, match=f"^segment_lora.safetensors's metadata {message}"):
        loader.load_e2p_checkpoint(base, "fp32", lora_path=lora)
    native, _ = loader.build_flux_patcher(bfl, "fp32")
    with pytest.raises(loader.E2PLoadError, match=f"^segment_lora.safetensors's metadata {message}"):
        loader.from_native_model(native, lora_path=lora)
