"""Command-line options shared by the T3 benchmarks (`t3_vllm.py`, `t3_profile.py`): where the random checkpoint
goes, the engine limits it runs with, and those limits as vLLM options."""

from __future__ import annotations

import argparse
from pathlib import Path

from chatterbox_vllm.engine.vllm_engine import VLLMOptions
from chatterbox_vllm.settings import Settings


def add_t3_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, required=True, help="folder for the random checkpoint and vLLM's files")
    parser.add_argument("--out", type=Path, help="JSON report")
    parser.add_argument("--variant", default="english", choices=["english", "multilingual"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="full", choices=["full", "tiny"], help="tiny: the CPU smoke size")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--gpu-memory-gib", type=float, default=8.0)


def engine_options(args: argparse.Namespace, max_num_seqs: int, device_bytes: int) -> VLLMOptions:
    """The limits `add_t3_engine_args` parsed, the memory budget as a share of the device's `device_bytes`."""
    return VLLMOptions(
        max_model_len=args.max_model_len,
        max_num_seqs=max_num_seqs,
        dtype=args.dtype,
        enforce_eager=args.eager,
        gpu_memory_utilization=args.gpu_memory_gib * 2**30 / device_bytes,
        compile=Settings().t3_compile,  # CHATTERBOX_T3_COMPILE, as the server reads it
    )
