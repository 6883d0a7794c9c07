"""The safetensors metadata keys of the files the pack writes and reads (weights, LoRAs, cached conditioning):
the trainer and the nodes write them, the loader and the conditioning cache read them back."""

META_TASK = "e2p.task"
META_REPRESENTATION = "e2p.representation"
META_PROMPT = "e2p.prompt"
META_TIME_EMBEDDING = "e2p.time_embedding"
META_FORMAT = "e2p.format"
META_EMA_DECAY = "e2p.ema_decay"
META_LORA_RANK = "e2p.lora_rank"
META_ENCODER = "e2p.encoder"                   # fingerprint of the text encoders behind a conditioning file
META_TEXT_ENCODERS = "e2p.text_encoders"       # the transformers text-encoder folder the trainer encoded with
