"""The benchmarks, a package run from the repository root: `python -m benchmarks.headline run ...`.

They import `chatterbox_vllm`; `chatterbox_vllm` never imports them."""
