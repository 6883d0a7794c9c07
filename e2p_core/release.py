"""How the released checkpoints were made and run: the settings every official entry point shares, which the
nodes, the trainer and the evaluation use as their defaults."""

T5_SEQUENCE_LENGTH = 512        # the official prompter pads T5 to exactly 512 tokens and uses no attention mask
EMBEDDED_GUIDANCE = 1.0         # every official entry point passes embedded guidance 1
DEFAULT_SEED = 42
PROCESSING_RESOLUTION = 768     # the official entry points run at 768 x 768

# Time-embedding variants a checkpoint can expect (see e2p_core/flow.py).
TIME_EMBEDDING_OFFICIAL = "bf16_frequencies"   # what the released checkpoints were trained with
TIME_EMBEDDING_STOCK = "fp32_frequencies"      # BFL / ComfyUI / diffusers
