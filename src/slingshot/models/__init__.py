"""Megatron-Core GPT builder (`megatron_gpt`), its CPU shim (`cpu_shim`), typed configs
(`config`) and exact mcore -> HF Llama/Qwen2 export (`export`).

Submodules are not imported here: importing Megatron-Core is slow and stages that only
load HF models should not pay for it.
"""
