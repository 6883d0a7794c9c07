"""ComfyUI's attention backends: which one it selected at import, which are installed, and switching a loaded model
and VAE to another one in place (so one process can time them all)."""

from __future__ import annotations

# ComfyUI attention backends, as (DiT function name in the registry, VAE function) pairs: what the
# corresponding command-line flag makes ComfyUI select for both.
ATTENTION_BACKENDS = {
    "pytorch": ("pytorch", "pytorch_attention"),      # --use-pytorch-cross-attention (default on NVIDIA)
    "sub_quad": ("sub_quad", "normal_attention"),     # ComfyUI's default on CPU
    "split": ("split", "normal_attention"),           # --use-split-cross-attention
    "sage": ("sage", "pytorch_attention"),            # --use-sage-attention (needs the sageattention package)
    "flash": ("flash", "pytorch_attention"),          # --use-flash-attention (needs flash-attn)
}


def comfy_attention_in_use() -> dict[str, str]:
    """The attention functions ComfyUI selected at import: for the DiT (FLUX) and for the VAE."""
    import comfy.ldm.flux.math as flux_math
    import comfy.ldm.modules.diffusionmodules.model as vae_model

    return {"dit": flux_math.optimized_attention.__name__, "vae": vae_model.vae_attention().__name__}


def available_attention_backends() -> list[str]:
    from comfy.ldm.modules import attention

    return [name for name, (dit, _) in ATTENTION_BACKENDS.items()
            if attention.get_attention_function(dit, default=None) is not None]


def use_attention_backend(patcher, vae, backend: str) -> None:
    """Switch the attention a loaded model and VAE use, in place, to what ``backend``'s flag would select.

    The DiT goes through ComfyUI's own ``optimized_attention_override`` transformer option; the VAE's attention
    blocks hold their function as an attribute, which is replaced. ``None`` as backend restores the defaults.
    """
    import comfy.ldm.modules.diffusionmodules.model as vae_model
    from comfy.ldm.modules import attention

    options = patcher.model_options.setdefault("transformer_options", {})
    if backend is None:
        options.pop("optimized_attention_override", None)
        vae_function = vae_model.vae_attention()
    else:
        dit_name, vae_name = ATTENTION_BACKENDS[backend]
        dit_function = attention.get_attention_function(dit_name)

        def override(default_function, *args, **kwargs):
            return dit_function(*args, **kwargs)

        options["optimized_attention_override"] = override
        vae_function = getattr(vae_model, vae_name)
    for module in vae.first_stage_model.modules():
        if isinstance(module, vae_model.AttnBlock):
            module.optimized_attention = vae_function
