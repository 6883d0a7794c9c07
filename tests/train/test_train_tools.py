"""Trainer pieces around the loop: text conditioning from (tiny) CLIP-L + T5, config files, the 8-bit optimiser
option, conversion of official checkpoints and LoRAs, and the command line on train.data's synthetic scenes."""

import os

import pytest
import torch

from e2p_dev import tiny_models as tm
import trainer_fixtures as tf

PROMPT_WORDS = sorted({w for p in ("Transform to depth map while maintaining original composition",
                                   "Transform to normal map while maintaining original composition",
                                   "Transform to matting map while maintaining original composition") for w in p.split()})


def tiny_text_encoders(folder):
    """CLIP-L- and T5-shaped encoders (pooled 768, sequence width 64) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2} | {w: i + 3 for i, w in enumerate(PROMPT_WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        eos_token="[EOS]")
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=tf.POOLED_DIM, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77))
    t5 = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=tf.CONTEXT_DIM, d_kv=16, d_ff=64, num_layers=1,
                                 num_heads=2))
    for name, item in (("tokenizer", tokenizer), ("tokenizer_2", tokenizer), ("text_encoder", clip),
                       ("text_encoder_2", t5)):
        item.save_pretrained(os.path.join(folder, name))
    return folder


def test_conditioning_is_encoded_once_cached_and_checked(tmp_path):
    from e2p_core.saved_conditioning import load_conditioning
    from train.conditioning import ConditioningError, prepare_conditioning

    encoders = tiny_text_encoders(str(tmp_path / "encoders"))
    cache = str(tmp_path / "cond.safetensors")
    cond, pooled = prepare_conditioning("depth", cache, encoders)
    assert cond.shape == (1, 512, tf.CONTEXT_DIM) and pooled.shape == (1, tf.POOLED_DIM)
    from transformers import AutoTokenizer, T5EncoderModel

    t5 = T5EncoderModel.from_pretrained(os.path.join(encoders, "text_encoder_2")).eval()
    tokens = AutoTokenizer.from_pretrained(os.path.join(encoders, "tokenizer_2"))(
        "Transform to depth map while maintaining original composition", padding="max_length", max_length=512,
        return_tensors="pt")
    with torch.no_grad():
        unmasked = t5(tokens.input_ids).last_hidden_state
        masked = t5(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    assert torch.allclose(cond, unmasked, atol=1e-6)               # official: pad to 512, no attention mask
    assert not torch.allclose(cond[:, :8], masked[:, :8], atol=1e-3)
    stored, stored_pooled, metadata = load_conditioning(cache)
    assert torch.equal(stored, cond) and torch.equal(stored_pooled, pooled)
    again, _ = prepare_conditioning("depth", cache, None)          # cached: no encoders needed
    assert torch.equal(again, cond)
    with pytest.raises(ConditioningError, match="not the normal prompt"):
        prepare_conditioning("normal", cache, encoders)
    normal, _ = prepare_conditioning("normal", str(tmp_path / "normal.safetensors"), encoders)
    assert not torch.allclose(normal, cond)


def test_run_encodes_conditioning_with_text_encoders(tmp_path):
    from train.train import run

    encoders = tiny_text_encoders(str(tmp_path / "encoders"))
    config = tf.config(tmp_path, "depth", "lora", max_steps=1, conditioning=None, text_encoders=encoders)
    run(config, train_dataset=tf.SyntheticScenes("depth", count=2), collate_fn=tf.collate)
    assert os.path.isfile(os.path.join(config.output_dir, "conditioning-depth.safetensors"))


def test_config_file_overrides_and_errors(tmp_path):
    from train import config as config_module

    path = tmp_path / "run.yaml"
    path.write_text("task: depth\noutput_dir: out\nbase_model: base\nlearning_rate: 1e-5\nmode: lora\n")
    config = config_module.load(str(path), dict([config_module.parse_override("max_steps=7")]))
    assert config.learning_rate == 1e-5 and config.max_steps == 7 and config.lora_rank == 64
    with pytest.raises(config_module.ConfigError, match="unknown config field"):
        config_module.parse_override("learning_rat=1")
    path.write_text("task: depth\noutput_dir: out\nbase_model: base\nmode: half\n")
    with pytest.raises(config_module.ConfigError, match="'mode'"):
        config_module.load(str(path))
    path.write_text("task: depth\noutput_dir: out\n")
    with pytest.raises(config_module.ConfigError, match="base_model"):
        config_module.load(str(path))


def test_8bit_adamw_needs_bitsandbytes(tmp_path):
    from train.assembly import build_optimizer
    from train.errors import TrainingError

    config = tf.config(tmp_path, "depth", "full", optimizer="adamw8bit")
    parameters = [torch.nn.Parameter(torch.zeros(4))]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(TrainingError, match="pip install bitsandbytes"):
            build_optimizer(config, parameters)
    else:
        assert type(build_optimizer(config, parameters)).__name__ == "AdamW8bit"


def test_official_checkpoint_converts_exactly(tmp_path):
    from e2p_core import checkpoint_layouts
    from train.__main__ import main
    from train.model import load_transformer

    bfl = tm.bfl_state_dict(depth=1, single_depth=1, seed=5)
    official = tm.in_layout(bfl, "diffsynth", "pipe.dit.")
    official["pipe.dit.coord_encoder.proj.weight"] = torch.zeros(4, 4)
    path = tm.write(str(tmp_path / "depth.safetensors"), official)
    assert main(["convert-official", path, str(tmp_path / "converted")]) == 0
    model = load_transformer(str(tmp_path / "converted"))
    converted = checkpoint_layouts.to_bfl(model.state_dict()).state_dict
    assert converted.keys() == bfl.keys()
    assert all(torch.equal(converted[k], bfl[k]) for k in bfl)


def test_command_line_trains_on_synthetic_generic_data(tmp_path):
    import yaml

    from train.__main__ import main
    from train.data.synthetic import write_dataset
    from train.records import VALIDATION_LOG, read_jsonl

    root = tmp_path / "scenes"
    train_manifest = write_dataset(root, "generic", 4, width=48, height=32, split="train", supersample=1)
    val_manifest = write_dataset(root, "generic", 2, width=48, height=32, split="val", supersample=1)
    base = tf.make_base_model(str(tmp_path / "base"))
    values = {"task": "depth", "output_dir": str(tmp_path / "run"), "base_model": base,
              "conditioning": tf.make_conditioning(str(tmp_path / "cond.safetensors"), "depth"),
              "train_data": [{"format": "generic", "manifest": str(train_manifest), "task": "depth"}],
              "val_data": [{"format": "generic", "manifest": str(val_manifest), "task": "depth"}],
              "resolution": 32, "mode": "lora", "lora_rank": 4, "mixed_precision": "no", "batch_size": 2,
              "num_workers": 0, "validate_every": 2, "progress_bar": False, "gradient_checkpointing": False}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(values))
    assert main(["fit", str(config_file), "--set", "max_steps=2"]) == 0
    assert os.path.isfile(tmp_path / "run" / "export" / "depth_e2p_lora.safetensors")
    scores = read_jsonl(str(tmp_path / "run" / "logs" / VALIDATION_LOG))
    assert scores and scores[-1]["step"] == 2 and scores[-1]["images"] == 2 and "delta1" in scores[-1]
    assert main(["fit", str(config_file)]) == 2      # the run exists: refused without --resume


def test_shipped_configs_load():
    """Example run configs are valid TrainConfigs; accelerate configs parse with accelerate's own loader, their
    DeepSpeed json files exist, and the FSDP wrap classes are diffusers' FLUX blocks."""
    import glob
    import json

    import diffusers.models.transformers.transformer_flux as flux
    from accelerate.commands.config.config_args import load_config_from_file

    from train import config as config_module

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    runs = sorted(glob.glob(os.path.join(repo, "train", "configs", "*.yaml")))
    assert {os.path.basename(p) for p in runs} >= {"depth_full.yaml", "depth_lora.yaml", "normal_full.yaml",
                                                    "matting_full.yaml"}
    for path in runs:
        run_config = config_module.load(path)
        assert run_config.train_data and run_config.mixed_precision == "bf16"
    kinds = {}
    for path in sorted(glob.glob(os.path.join(repo, "train", "accelerate_configs", "*.yaml"))):
        launch = load_config_from_file(path)
        kinds[os.path.basename(path)] = str(launch.distributed_type)
        if launch.deepspeed_config:
            with open(os.path.join(repo, launch.deepspeed_config["deepspeed_config_file"])) as handle:
                stage = json.load(handle)["zero_optimization"]["stage"]
            assert f"zero{stage}" in os.path.basename(path)
        if launch.fsdp_config:
            for name in launch.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","):
                assert hasattr(flux, name)
    assert kinds == {"ddp.yaml": "DistributedType.MULTI_GPU", "fsdp.yaml": "DistributedType.FSDP",
                     "deepspeed_zero2.yaml": "DistributedType.DEEPSPEED",
                     "deepspeed_zero3.yaml": "DistributedType.DEEPSPEED"}


@pytest.mark.parametrize("task", ["depth", "normal", "matting"])
def test_validation_metrics_score_truth_and_errors(task):
    """The validation metrics (e2p_eval definitions) give a perfect score to the ground truth itself and a worse
    one to a wrong prediction, for every task."""
    from train.validation import sample_metrics

    sample = tf.SyntheticScenes(task, count=1)[0]
    perfect = sample_metrics(task, sample["target"], sample)
    wrong = sample_metrics(task, -sample["target"], sample)
    if task == "depth":
        assert perfect["abs_rel"] < 0.02 and perfect["delta1"] == 1.0
        assert wrong["abs_rel"] == pytest.approx(perfect["abs_rel"], rel=1e-4)   # affine: aligned away
        noise = torch.rand(sample["target"].shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        assert sample_metrics(task, noise, sample)["abs_rel"] > 10 * perfect["abs_rel"]
    elif task == "normal":
        assert perfect["mean_angle"] < 0.1 and perfect["a11_25"] == 100.0
        assert wrong["mean_angle"] > 90.0
    else:
        assert perfect["sad"] < 1e-6 and perfect["mse"] < 1e-9
        assert wrong["mad"] > 0.1
