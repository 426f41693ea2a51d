"""Models: HF model directories (`hf`, the hand-off format between stages) and the
Megatron-Core side of pretraining: the GPT builder and process groups (`megatron_gpt`),
its CPU shim (`cpu_shim`), typed configs (`config`), the training step (`megatron_train`),
sharded checkpoints (`megatron_checkpoint`), the pretraining datasets (`megatron_data`),
exact mcore -> HF Llama/Qwen2 export (`export`) and FLOPs/MFU (`flops`).

Submodules are not imported here: importing Megatron-Core is slow and stages that only
load HF models should not pay for it.
"""
