"""`EagerGraphs`: S3Gen's `CFMGraphs` with its CUDA graphs stood in for, so that on a CPU the rest of it runs."""

from __future__ import annotations

import threading

import torch

from chatterbox_vllm.models.s3gen.cfm_graphs import CFMGraphs


class EagerGraphs(CFMGraphs):
    """CFMGraphs whose 'graph' runs `solve` eagerly over its buffers when replayed: CUDA graphs need a GPU, and
    everything around them (which buckets, the queue, the capturer thread, the covering replay's buffers) is what
    is tested here. Records each capture's bucket and thread; background captures wait for `release`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: list[tuple[tuple[int, int], str]] = []
        self.release = threading.Event()

    def _record(self, rows, length, device, dtype, *, background):
        if background:
            assert self.release.wait(timeout=60)
        inputs = {name: torch.zeros(rows, channels, length, dtype=dtype)
                  for name, channels in (("x", self.channels), ("mask", 1), ("mu", self.channels),
                                         ("cond", self.channels))}  # fmt: skip
        inputs["spks"] = torch.zeros(rows, self.channels, dtype=dtype)
        output = torch.zeros(rows, self.channels, length, dtype=dtype)
        solve, steps = self.solve, self.n_timesteps

        class Replay:
            def replay(self) -> None:
                output.copy_(solve(inputs["x"], inputs["mask"], inputs["mu"], inputs["spks"], inputs["cond"], steps))

        self.recorded.append(((rows, length), threading.current_thread().name))
        return Replay(), inputs, output  # type: ignore[return-value]
