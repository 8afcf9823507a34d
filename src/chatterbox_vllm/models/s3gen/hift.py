"""HiFT, S3Gen's vocoder (`mel2wav`): 80-bin mel at 50 Hz -> 24 kHz waveform (chatterbox 0.1.7 `HiFTGenerator`).

HiFT = a neural source-filter excitation plus an iSTFTNet generator:

1. `ConvRNNF0Predictor` reads a pitch contour (Hz) off the mel.
2. `SourceModuleHnNSF` turns it, repeated to the audio rate, into an excitation: sines at F0 and its overtones
   where voiced, noise everywhere, merged by a Linear + tanh.
3. The generator upsamples the mel with transposed convolutions (x8, x5, x3) and Snake residual blocks; at every
   stage it adds the STFT of the excitation, strided down to that stage's rate. Its last convolution predicts a
   log-magnitude and a phase for a 16-point iSTFT with hop 4: 3 * 5 * 8 * 4 = 480 samples per mel frame.

Randomness (the contract S3Gen relies on). The excitation needs two draws, then the reference makes a third one
that it never uses; all come from one stream, in this order:

* phase: `rand((B, H, 1))` mapped to Uniform(-pi, pi) (`low + u * (high - low)` in float32); harmonic 0's is then
  set to 0;
* noise: `randn((B, H, L))`, scaled to 0.003 where voiced and 0.1/3 where unvoiced;
* unused: `randn((B, L, 1))`, drawn and discarded so that the stream advances exactly as in the reference.

With `generator=None` these come from torch's global RNG exactly as in the reference (the phase from the CPU
generator, the noise from the model device's generator). With a `torch.Generator` every draw uses it (on its own
device, then moved). S3Gen draws the flow's initial noise `randn_like(mu)` from the same generator first, so
`torch.Generator().manual_seed(s)` through S3Gen equals the reference's `torch.manual_seed(s)` followed by
`s3gen.inference(...)`. Tests may instead inject the draws (`SourceDraws`); then nothing is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from .f0_predictor import ConvRNNF0Predictor, F0PredictorConfig


def _as_tuple(value: Any) -> Any:
    """Lists (as JSON gives them back) -> tuples, recursively."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


@dataclass(frozen=True)
class HiFTConfig:
    """The vocoder as published in S3Gen (`S3Token2Wav.mel2wav`); no checkpoint carries these numbers."""

    in_channels: int = 80  # mel bins
    base_channels: int = 512  # width after conv_pre; halved by every upsampling stage
    nb_harmonics: int = 8  # overtones above F0: the sine source has nb_harmonics + 1 channels
    sampling_rate: int = 24_000
    nsf_alpha: float = 0.1  # sine amplitude
    nsf_sigma: float = 0.003  # noise std where voiced
    nsf_voiced_threshold: float = 10.0  # Hz; F0 above it is voiced
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_predictor: F0PredictorConfig = field(default_factory=F0PredictorConfig)

    def __post_init__(self) -> None:
        for name in (
            "upsample_rates",
            "upsample_kernel_sizes",
            "resblock_kernel_sizes",
            "resblock_dilation_sizes",
            "source_resblock_kernel_sizes",
            "source_resblock_dilation_sizes",
        ):
            object.__setattr__(self, name, _as_tuple(getattr(self, name)))
        n_up = len(self.upsample_rates)
        if not (len(self.upsample_kernel_sizes) == len(self.source_resblock_kernel_sizes) == n_up):
            raise ValueError("HiFTConfig: upsample rates, kernel sizes and source resblocks must be as many")
        if len(self.source_resblock_dilation_sizes) != n_up:
            raise ValueError("HiFTConfig: one source resblock dilation list per upsampling stage")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("HiFTConfig: one resblock dilation list per resblock kernel size")
        if self.base_channels % (2**n_up):
            raise ValueError(f"HiFTConfig: base_channels must be divisible by {2**n_up}")
        if self.f0_predictor.in_channels != self.in_channels:
            raise ValueError("HiFTConfig: the F0 predictor must read the same mel bins as the generator")

    @property
    def num_harmonics(self) -> int:
        """Channels of the sine source: F0 and its overtones."""
        return self.nb_harmonics + 1

    @property
    def samples_per_frame(self) -> int:
        """Output samples per mel frame (480 = 20 ms at 24 kHz)."""
        return math.prod(self.upsample_rates) * self.istft_hop_len

    @classmethod
    def tiny(cls) -> HiFTConfig:
        """Narrow channels; the same rates, hop, FFT size and sample rate, so still 480 samples per mel frame."""
        return cls(base_channels=16, f0_predictor=F0PredictorConfig.tiny())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HiFTConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown HiFTConfig fields: {sorted(unknown)}")
        d = dict(d)
        if isinstance(d.get("f0_predictor"), dict):
            d["f0_predictor"] = F0PredictorConfig.from_dict(d["f0_predictor"])
        return cls(**d)


class SourceDraws(NamedTuple):
    """The random values of one excitation, as the reference draws them (for tests and reproducible runs).

    phase: `[B, H, 1]` Uniform(-pi, pi) samples as drawn (harmonic 0's is ignored: it is zeroed).
    noise: `[B, H, L]` standard normal, before scaling by the voiced/unvoiced noise amplitude.
    """

    phase: torch.Tensor
    noise: torch.Tensor


# --------------------------------------------------------------------------------------------------- building blocks
class Snake(nn.Module):
    """x + sin(alpha * x)^2 / alpha, with a learned per-channel alpha (linear scale, as published)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))
        self.eps = 1e-9  # keeps 1/alpha finite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _snake(x, self.alpha, self.eps)


def _snake(x: torch.Tensor, alpha: torch.Tensor, eps: float) -> torch.Tensor:
    """Snake of x `[B, C, T]` with alpha `[C]`; eager, five kernels on the whole tensor (one each, fused, compiled)."""
    alpha = alpha[None, :, None]
    return x + (1.0 / (alpha + eps)) * torch.sin(x * alpha).pow(2)


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


# ------------------------------------------------------------------------------------ compiled regions (GPUs)
# HiFT's time goes to its Snakes and masks at the audio-side rates (on a 64-row batch the last stage's activations
# are ~1 GB each), each an eager kernel per op: these functions are what `HiFTGenerator.compile_blocks` runs through
# torch.compile, so that Inductor fuses each into one kernel. Written as free functions of tensors (not modules)
# with every dimension dynamic, one compilation serves every ResBlock width and every length; the convolutions
# between them stay cuDNN's. The maths is the eager ops' (`_snake`, `_masked`), in the same order.
def _masked_snake(x: torch.Tensor, mask: torch.Tensor | None, alpha: torch.Tensor, eps: float) -> torch.Tensor:
    return _snake(_masked(x, mask), alpha, eps)


def _residual_masked_snake(
    y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, alpha: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ResBlock's residual sum y + x and the next dilation's first Snake of it, read from memory once."""
    x = y + x
    return x, _snake(_masked(x, mask), alpha, eps)


def _istft_parts(spectrum: torch.Tensor, valid: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`istft_rows`' real and imaginary parts from `conv_post`'s log-magnitudes and phases (its ops, in order)."""
    magnitude = torch.clamp(torch.exp(spectrum[:, :n_bins, :]), max=1e2) * valid
    phase = torch.sin(spectrum[:, n_bins:, :])
    return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


class CompiledRegions(NamedTuple):
    """The functions above, each through torch.compile (same signatures)."""

    masked_snake: Callable[..., Any]
    residual_masked_snake: Callable[..., Any]
    istft_parts: Callable[..., Any]


_COMPILED: CompiledRegions | None = None


def compiled_regions() -> CompiledRegions:
    """The regions through torch.compile (Inductor, dynamic shapes), made once per process: Dynamo compiles on the
    first call of each (at start-up, `HiFTGenerator.warm_up_compiled`)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = CompiledRegions(
            *(torch.compile(fn, dynamic=True) for fn in (_masked_snake, _residual_masked_snake, _istft_parts))
        )
    return _COMPILED


def frame_mask(lengths: list[int], width: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`[B, 1, width]`: 1 on each row's first `lengths[b]` positions, 0 after."""
    positions = torch.arange(width, device=device)
    limits = torch.tensor(lengths, device=device)
    return (positions[None, :] < limits[:, None]).to(dtype)[:, None, :]


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock(nn.Module):
    """Snake -> dilated conv -> Snake -> conv, with a residual connection, once per dilation."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size)))
            for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.compiled: CompiledRegions | None = None  # set by HiFTGenerator.compile_blocks

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` `[B, 1, T]` (rows of a padded batch): every convolution then reads zeros past its row's end, as
        the row alone would through its zero padding (Snake(0) = 0, so masking before each conv suffices)."""
        if self.compiled is not None:
            return self._forward_compiled(x, mask, self.compiled)
        for conv1, conv2, act1, act2 in zip(
            self.convs1, self.convs2, self.activations1, self.activations2, strict=True
        ):
            h = conv1(act1(_masked(x, mask)))
            x = conv2(act2(_masked(h, mask))) + x
        return x

    def _forward_compiled(self, x: torch.Tensor, mask: torch.Tensor | None, regions: CompiledRegions) -> torch.Tensor:
        """`forward` with each mask + Snake one fused kernel, and each residual sum fused with the next Snake.
        The alphas go in detached: plain tensors, whose width Dynamo keeps dynamic (a parameter's it would not)."""
        acts1, acts2 = cast(list[Snake], list(self.activations1)), cast(list[Snake], list(self.activations2))
        if not acts1:
            return x
        a = regions.masked_snake(x, mask, acts1[0].alpha.detach(), acts1[0].eps)
        for i, (conv1, conv2, act2) in enumerate(zip(self.convs1, self.convs2, acts2, strict=True)):
            y = conv2(regions.masked_snake(conv1(a), mask, act2.alpha.detach(), act2.eps))
            if i + 1 == len(acts1):
                return y + x
            x, a = regions.residual_masked_snake(y, x, mask, acts1[i + 1].alpha.detach(), acts1[i + 1].eps)
        return x  # not reached: the last dilation returns


# --------------------------------------------------------------------------------------------------- excitation
def _draw_device(generator: torch.Generator | None, default: torch.device) -> torch.device:
    return generator.device if generator is not None else default


class SineGen(nn.Module):
    """F0 `[B, 1, L]` (Hz, audio rate) -> (harmonic sines plus noise `[B, H, L]`, voiced mask `[B, 1, L]`).

    Always computed in float32, as the reference does: the phase is a float32 running sum of F0 / sample rate.
    """

    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.num_harmonics = config.num_harmonics
        self.sine_amp = config.nsf_alpha
        self.noise_std = config.nsf_sigma
        self.voiced_threshold = config.nsf_voiced_threshold

    def draw(self, batch: int, length: int, device: torch.device, generator: torch.Generator | None) -> SourceDraws:
        """The phase and noise draws, in the reference's order (see the module docstring)."""
        shape = (batch, self.num_harmonics, 1)
        # Uniform(-pi, pi).sample(): float32 bounds, `low + u * (high - low)`; the reference draws it on the CPU.
        low = torch.tensor(-math.pi, dtype=torch.float32)
        high = torch.tensor(math.pi, dtype=torch.float32)
        u = torch.rand(shape, generator=generator, dtype=torch.float32, device=_draw_device(generator, low.device))
        phase = low.to(u.device) + u * (high - low).to(u.device)
        noise = torch.randn(
            (batch, self.num_harmonics, length),
            generator=generator,
            dtype=torch.float32,
            device=_draw_device(generator, device),
        )
        return SourceDraws(phase.to(device), noise.to(device))

    def forward(
        self, f0: torch.Tensor, draws: SourceDraws | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = f0.float()
        batch, _, length = f0.shape
        if draws is None:
            draws = self.draw(batch, length, f0.device, generator)
        # Frequency of harmonic k, in cycles per sample; same op order as the reference (f0 * k / sr).
        freqs = torch.cat([f0 * (k + 1) / self.sampling_rate for k in range(self.num_harmonics)], dim=1)
        theta = 2 * math.pi * (torch.cumsum(freqs, dim=-1) % 1)
        phase = draws.phase.to(device=f0.device, dtype=torch.float32).clone()
        phase[:, 0, :] = 0
        sines = self.sine_amp * torch.sin(theta + phase)

        uv = (f0 > self.voiced_threshold).to(torch.float32)
        # Unvoiced: noise of std sine_amp / 3 (peaks near sine_amp); voiced: a little noise under the sines.
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        noise = noise_amp * draws.noise.to(device=f0.device, dtype=torch.float32)
        return sines * uv + noise, uv


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise excitation: SineGen, then a Linear over the harmonics and tanh -> `[B, 1, L]`."""

    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.l_sin_gen = SineGen(config)
        self.l_linear = nn.Linear(config.num_harmonics, 1)

    def forward(
        self, f0: torch.Tensor, draws: SourceDraws | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F0 `[B, 1, L]` at the audio rate -> (excitation `[B, 1, L]`, voiced mask `[B, 1, L]`)."""
        sines, uv = self.l_sin_gen(f0, draws=draws, generator=generator)
        merged = torch.tanh(self.l_linear(sines.transpose(1, 2).to(self.l_linear.weight.dtype)))
        if draws is None:
            # The reference also draws a noise branch that its generator never uses; drawing it keeps the random
            # stream (global or `generator`) in step with the reference for whatever is drawn next.
            device = _draw_device(generator, uv.device)
            torch.randn((uv.size(0), uv.size(2), 1), generator=generator, dtype=uv.dtype, device=device)
        return merged.transpose(1, 2), uv


# --------------------------------------------------------------------------------------------------- generator
class HiFTGenerator(nn.Module):
    """Mel `[B, 80, T]` -> waveform `[B, 480 T]` in [-0.99, 0.99] (before S3Gen's fade-in).

    State dict: the published `mel2wav.*` names (`m_source`, `conv_pre`, `ups`, `source_downs`,
    `source_resblocks`, `resblocks`, `conv_post`, `f0_predictor`); weight-normed convolutions keep torch's
    parametrization (`X.parametrizations.weight.original0` = g, `original1` = v), so the weight is recomputed from
    g and v on every call, exactly as in the reference, until `fold_weight_norm` (the loader's inference models)
    computes it once.
    """

    def __init__(self, config: HiFTConfig = HiFTConfig()):
        super().__init__()
        self.config = config
        n_fft = config.istft_n_fft
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.num_upsamples = len(config.upsample_rates)

        self.m_source = SourceModuleHnNSF(config)
        self.conv_pre = weight_norm(nn.Conv1d(config.in_channels, config.base_channels, 7, padding=3))

        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True)):
            conv = nn.ConvTranspose1d(
                config.base_channels // 2**i,
                config.base_channels // 2 ** (i + 1),
                kernel,
                rate,
                padding=(kernel - rate) // 2,
            )
            self.ups.append(weight_norm(conv))

        # The source STFT (hop 4) is strided down to each stage's rate: stage i runs at
        # prod(upsample_rates[:i+1]) per mel frame, i.e. prod(upsample_rates[i+1:]) STFT frames per stage step.
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (kernel, dilations) in enumerate(
            zip(config.source_resblock_kernel_sizes, config.source_resblock_dilation_sizes, strict=True)
        ):
            channels = config.base_channels // 2 ** (i + 1)
            stride = math.prod(config.upsample_rates[i + 1 :])
            if stride == 1:
                down = nn.Conv1d(n_fft + 2, channels, 1)
            else:
                down = nn.Conv1d(n_fft + 2, channels, 2 * stride, stride, padding=stride // 2)
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(channels, kernel, dilations))

        self.resblocks = nn.ModuleList()
        for i in range(self.num_upsamples):
            channels = config.base_channels // 2 ** (i + 1)
            for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock(channels, kernel, dilations))

        self.conv_post = weight_norm(nn.Conv1d(channels, n_fft + 2, 7, padding=3))
        self.f0_predictor = ConvRNNF0Predictor(config.f0_predictor)
        self.compiled = False  # see compile_blocks

    # ------------------------------------------------------------------------------------------- inference set-up
    def fold_weight_norm(self) -> int:
        """Replace every weight-normed convolution's parametrization (g, v) by its weight g v / ||v||, computed once:
        at inference the weight is the same on every call, which otherwise recomputes it (a few kernels per
        convolution, ~80 convolutions). Call it after loading the published state dict (whose names need the
        parametrizations); from then on `state_dict()` names `X.weight` instead. Returns the convolutions folded."""
        convolutions = [m for m in self.modules() if parametrize.is_parametrized(m, "weight")]  # listed first:
        with torch.no_grad():  # removing a parametrization changes the module tree being walked
            for module in convolutions:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return len(convolutions)

    @property
    def weight_norm_folded(self) -> bool:
        """Whether `fold_weight_norm` ran (no convolution keeps its g and v)."""
        return not any(parametrize.is_parametrized(m, "weight") for m in self.modules())

    def compile_blocks(self) -> None:
        """Run HiFT's elementwise regions through torch.compile from now on (GPUs; the server's `s3gen_compile`,
        beside the flow's `ConditionalCFM.compile_blocks`): every ResBlock's masks, Snakes and residual sums and
        the iSTFT's magnitude and phase (`compiled_regions`). Eager, a Snake is five kernels over the whole
        activation and the last stage's activations of a 64-row batch are ~1 GB each; fused, one. The maths stays
        float32, the same ops in the same order (Inductor's kernels round differently). The regions are free
        functions with dynamic shapes, so one compilation serves every width and length: a few graphs in all
        (one row or several, masked or not), compiled by `warm_up_compiled` at start-up."""
        regions = compiled_regions()
        for block in self._resblocks():
            block.compiled = regions
        self.compiled = True

    def uncompile_blocks(self) -> None:
        """Back to the eager ops (where Inductor cannot build its kernels)."""
        for block in self._resblocks():
            block.compiled = None
        self.compiled = False

    def _resblocks(self) -> list[ResBlock]:
        return [m for m in self.modules() if isinstance(m, ResBlock)]

    @torch.inference_mode()
    def warm_up_compiled(self, frames: int = 37) -> int:
        """Compile the regions now (start-up) for every kind of call S3Gen makes: a padded batch of several rows,
        of one row (`inference_rows`), and one mel alone (`inference`, unmasked). The lengths differ from each
        other and from every channel count, so that Dynamo's shapes stay general (duck sizing would tie equal
        sizes together) and no later length recompiles. Returns the calls run (0 when not compiled)."""
        if not self.compiled:
            return 0
        weight = self.conv_pre.weight
        generator = torch.Generator(device=weight.device).manual_seed(0)  # leaves the global RNG alone
        mels = [
            torch.randn(self.config.in_channels, n, generator=generator, device=weight.device, dtype=weight.dtype) - 4
            for n in (frames, frames - 8, frames - 12, frames - 4, frames - 6)
        ]
        self.inference_rows(mels[:3], [generator] * 3)  # 3 rows: no channel count is 3
        self.inference_rows(mels[3:4], [generator])
        self.inference(mels[4][None], generator=generator)
        return 3

    # ------------------------------------------------------------------------------------------- STFT
    def _window(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        # Periodic Hann (scipy's get_window("hann", n, fftbins=True)), computed in float64 like scipy, then cast;
        # 16 values, so it is made per call rather than kept as a buffer that meta-device builds would leave empty.
        return torch.hann_window(self.config.istft_n_fft, dtype=torch.float64, device=device).to(dtype)

    def _source_stft(self, source: torch.Tensor) -> torch.Tensor:
        """Excitation `[B, 1, L]` -> real and imaginary STFT parts stacked on channels `[B, n_fft + 2, L / hop + 1]`."""
        cfg = self.config
        spec = torch.stft(
            source.squeeze(1),
            cfg.istft_n_fft,
            cfg.istft_hop_len,
            cfg.istft_n_fft,
            window=self._window(source.device, source.dtype),
            return_complex=True,
        )
        spec = torch.view_as_real(spec)
        return torch.cat([spec[..., 0], spec[..., 1]], dim=1)

    def istft(self, spectrum: torch.Tensor) -> torch.Tensor:
        """`conv_post` output `[B, n_fft + 2, F]` -> waveform `[B, hop (F - 1)]`, not yet clamped.

        The first n_fft/2 + 1 channels are log-magnitudes (exp, clipped at 100); the rest go through sin and are
        used as the phase (the reference's choice; the sin is redundant but changes the values).
        """
        cfg = self.config
        n_bins = cfg.istft_n_fft // 2 + 1
        magnitude = torch.clamp(torch.exp(spectrum[:, :n_bins, :]), max=1e2)
        phase = torch.sin(spectrum[:, n_bins:, :])
        real = magnitude * torch.cos(phase)
        imag = magnitude * torch.sin(phase)
        return torch.istft(
            torch.complex(real, imag),
            cfg.istft_n_fft,
            cfg.istft_hop_len,
            cfg.istft_n_fft,
            window=self._window(spectrum.device, spectrum.dtype),
        )

    # ------------------------------------------------------------------------------------------- generator
    def decode_spectrum(self, mel: torch.Tensor, source: torch.Tensor, frames: list[int] | None = None) -> torch.Tensor:
        """Mel `[B, 80, T]` and excitation `[B, 1, 480 T]` -> `conv_post` output `[B, n_fft + 2, 120 T + 1]`.

        `frames`: the real mel length of each row of a right-padded batch. Every convolution then reads zeros
        past its row's end (masks at each stage's rate) and the excitation's STFT is taken per row, so each row's
        output on its own frames equals the row decoded alone.
        """
        masks: list[torch.Tensor | None] = [None] * (self.num_upsamples + 1)
        if frames is None:
            source_stft = self._source_stft(source)
        else:
            masks = [*self._stage_masks(frames, mel.size(-1), mel.device, mel.dtype)]
            source_stft = self._source_stft_rows(source, frames)
        x = self.conv_pre(mel)
        for i in range(self.num_upsamples):
            x = F.leaky_relu(x, self.config.lrelu_slope)
            x = self.ups[i](_masked(x, masks[i]))
            if i == self.num_upsamples - 1:
                # One reflected sample in front makes the length match the centred STFT's L / hop + 1 frames.
                x = F.pad(x, (1, 0), mode="reflect")
            mask = masks[i + 1]
            x = x + self.source_resblocks[i](self.source_downs[i](source_stft), mask)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x, mask)
            for block in blocks[1:]:
                xs = xs + block(x, mask)
            x = xs / self.num_kernels
        # The reference uses leaky_relu's default slope (0.01) here, not lrelu_slope.
        x = F.leaky_relu(x)
        return self.conv_post(_masked(x, masks[-1]))

    def _stage_masks(
        self, frames: list[int], width: int, device: torch.device, dtype: torch.dtype
    ) -> list[torch.Tensor]:
        """Masks at the mel rate and after each upsampling stage (the last one has the STFT's extra frame)."""
        masks, scale = [frame_mask(frames, width, device=device, dtype=dtype)], 1
        for i, rate in enumerate(self.config.upsample_rates):
            scale *= rate
            extra = 1 if i == self.num_upsamples - 1 else 0
            lengths = [scale * f + extra for f in frames]
            masks.append(frame_mask(lengths, scale * width + extra, device=device, dtype=dtype))
        return masks

    def _source_stft_rows(self, source: torch.Tensor, frames: list[int]) -> torch.Tensor:
        """The STFT of each row's own excitation (the centred STFT reflects at the row's end, not into padding),
        zero after the row's last STFT frame, as one batched STFT.

        The centred STFT of a row alone reflects `n_fft / 2` samples at both of its ends; one gather builds that
        padded signal for every row at once (each reflecting at its own end), then an uncentred STFT frames them
        all: the same values through the same FFT as row by row, in a few kernels instead of a few per row.
        """
        cfg = self.config
        half = cfg.istft_n_fft // 2
        signal = source.squeeze(1)
        width = signal.size(-1)
        lengths = torch.tensor([f * cfg.samples_per_frame for f in frames], device=signal.device)[:, None]
        position = torch.arange(-half, width + half, device=signal.device)[None, :]
        reflected = torch.where(position < 0, -position, position)
        reflected = torch.where(reflected >= lengths, 2 * (lengths - 1) - reflected, reflected)
        padded = torch.gather(signal, 1, reflected.clamp(0, width - 1))  # past a row's padded end: masked below
        spec = torch.stft(
            padded, cfg.istft_n_fft, cfg.istft_hop_len, cfg.istft_n_fft,
            window=self._window(source.device, source.dtype), center=False, return_complex=True,
        )  # fmt: skip
        spec = torch.view_as_real(spec)
        stft = torch.cat([spec[..., 0], spec[..., 1]], dim=1)
        hops = [f * cfg.samples_per_frame // cfg.istft_hop_len + 1 for f in frames]
        return stft * frame_mask(hops, stft.size(-1), device=stft.device, dtype=stft.dtype)

    def istft_rows(self, spectrum: torch.Tensor, frames: list[int]) -> list[torch.Tensor]:
        """`istft` of each row of a right-padded `conv_post` output, on its own `frames` mel frames, as one batch:
        waveforms `[480 frames_b]`, each what `istft` gives the row's frames alone, clamped to +-audio_limit.

        torch.istft's steps written out (inverse real FFT, window, overlap-add, division by the summed squared
        window, `n_fft / 2` trimmed at both ends) with the frames past each row's end set to zero and left out of
        its window sum, so no row hears another's padding.
        """
        cfg = self.config
        n_fft, hop = cfg.istft_n_fft, cfg.istft_hop_len
        n_bins = n_fft // 2 + 1
        batch, _, width = spectrum.shape
        hops = [f * cfg.samples_per_frame // hop + 1 for f in frames]
        valid = frame_mask(hops, width, device=spectrum.device, dtype=spectrum.dtype)  # [B, 1, F]
        parts = compiled_regions().istft_parts if self.compiled else _istft_parts
        real, imag = parts(spectrum, valid, n_bins)
        window = self._window(spectrum.device, spectrum.dtype)
        segments = torch.fft.irfft(torch.complex(real, imag), n=n_fft, dim=1) * window[None, :, None]
        total = n_fft + hop * (width - 1)

        def overlap_add(columns: torch.Tensor) -> torch.Tensor:
            return F.fold(columns, output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop)).view(batch, total)

        signal = overlap_add(segments)
        envelope = overlap_add(window.pow(2)[None, :, None] * valid)
        signal = signal / torch.where(envelope > 1e-11, envelope, torch.ones_like(envelope))
        signal = torch.clamp(signal, -cfg.audio_limit, cfg.audio_limit)
        half = n_fft // 2
        return [signal[b, half : half + hop * (h - 1)] for b, h in enumerate(hops)]

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Mel `[B, 80, T]` and excitation `[B, 1, 480 T]` -> waveform `[B, 480 T]` clamped to +-audio_limit."""
        wav = self.istft(self.decode_spectrum(mel, source))
        return torch.clamp(wav, -self.config.audio_limit, self.config.audio_limit)

    def source(
        self,
        mel: torch.Tensor,
        generator: torch.Generator | None = None,
        draws: SourceDraws | None = None,
        frames: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel `[B, 80, T]` -> (predicted F0 `[B, T]` in Hz, excitation `[B, 1, 480 T]`); `frames`: as in
        `decode_spectrum` (the F0 predictor's convolutions then stop at each row's end)."""
        mask = None if frames is None else frame_mask(frames, mel.size(-1), device=mel.device, dtype=mel.dtype)
        f0 = self.f0_predictor(mel, mask)
        f0_audio = f0[:, None, :].repeat_interleave(self.config.samples_per_frame, dim=-1)  # nearest upsampling
        excitation, _ = self.m_source(f0_audio, draws=draws, generator=generator)
        return f0, excitation

    @torch.inference_mode()
    def inference_rows(self, mels: list[torch.Tensor], generators: list[torch.Generator | None]) -> list[torch.Tensor]:
        """Waveforms `[480 T_b]` of mels `[80, T_b]` of different lengths, run as one right-padded batch.

        Each equals `inference(mel[None], generator=g)` for its row up to float rounding: the draws come from each
        row's own generator in that call's order, and the masks of `decode_spectrum` keep rows from reading
        padding. The gain is fewer, larger kernels: at batch one the vocoder is launch-bound on a GPU.
        """
        frames = [int(m.size(-1)) for m in mels]
        width = max(frames)
        batch = torch.stack([F.pad(m, (0, width - m.size(-1))) for m in mels])
        length = width * self.config.samples_per_frame
        phases, noises = [], []
        for f, generator in zip(frames, generators, strict=True):
            draws = self.m_source.l_sin_gen.draw(1, f * self.config.samples_per_frame, batch.device, generator)
            phases.append(draws.phase)
            noises.append(F.pad(draws.noise, (0, length - draws.noise.size(-1))))
            # the draw the reference makes and never uses, so each generator ends where it would alone
            device = _draw_device(generator, batch.device)
            torch.randn((1, draws.noise.size(-1), 1), generator=generator, dtype=torch.float32, device=device)
        draws = SourceDraws(torch.cat(phases), torch.cat(noises))
        with parametrize.cached():
            _, source = self.source(batch, draws=draws, frames=frames)
            spectrum = self.decode_spectrum(batch, source.to(batch.dtype), frames)
        return self.istft_rows(spectrum, frames)

    def forward(
        self,
        speech_feat: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        draws: SourceDraws | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel `[B, 80, T]` -> (waveform `[B, 480 T]`, excitation `[B, 1, 480 T]`).

        `cache_source` `[B, 1, n]` replaces the first n samples of the excitation (the reference's hook for
        streaming continuity); `generator` / `draws`: see the module docstring.
        """
        _, source = self.source(speech_feat, generator=generator, draws=draws)
        if cache_source is not None and cache_source.size(-1) > 0:
            source = source.clone()
            source[:, :, : cache_source.size(-1)] = cache_source.to(source)
        return self.decode(speech_feat, source.to(speech_feat.dtype)), source

    @torch.inference_mode()
    def inference(
        self,
        speech_feat: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        draws: SourceDraws | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` without autograd; what S3Gen calls before applying its fade-in.

        The weight-normed convolutions' weights are computed once per call instead of once per use (same values),
        or not at all once `fold_weight_norm` has computed them for good.
        """
        with parametrize.cached():
            return self.forward(speech_feat, cache_source=cache_source, generator=generator, draws=draws)
