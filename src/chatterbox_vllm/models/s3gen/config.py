"""Dimensions of S3Gen (speech tokens -> 24 kHz audio) and of the networks it is made of.

Defaults are the published model (chatterbox 0.1.7 `S3Token2Wav`); published checkpoints carry no config, so these
numbers are the contract with `s3gen.safetensors` / `s3gen.pt`. `tiny()` shrinks widths and depths for tests but
keeps everything other parts rely on: the 6561-token speech vocabulary, 80 mel bins, the 192-wide x-vector,
sample rates and hop sizes. `meanflow_model()` is Turbo's and Nano's mean-flow S3Gen (the reference's
`S3Gen(meanflow=True)`, `s3gen_meanflow.safetensors`): the same networks plus the estimator's `time_embed_mixer`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..s3tokenizer import S3TokenizerConfig
from .campplus import CAMPPlusConfig
from .hift import HiFTConfig

S3GEN_SAMPLE_RATE = 24_000
MEL_BINS = 80
SPEECH_VOCAB_SIZE = 6561
MEANFLOW_STEPS = 2  # Euler steps of the mean-flow S3Gen (chatterbox 0.1.7 `tts_turbo`: n_cfm_timesteps=2)


def _check_fields(cls: type, d: dict[str, Any]) -> None:
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")


@dataclass(frozen=True)
class UpsampleEncoderConfig:
    """The Conformer token encoder (`flow.encoder`): 25 Hz token embeddings -> 50 Hz features."""

    input_size: int = 512  # width of the token embedding fed in
    output_size: int = 512  # model width (attention, convolutions, output)
    attention_heads: int = 8
    linear_units: int = 2048  # feed-forward hidden width
    num_blocks: int = 6  # blocks before upsampling
    num_up_blocks: int = 4  # blocks after upsampling
    pre_lookahead_len: int = 3  # future tokens the lookahead conv sees
    upsample_stride: int = 2  # mel frames per token

    @classmethod
    def tiny(cls) -> UpsampleEncoderConfig:
        return cls(input_size=32, output_size=32, attention_heads=2, linear_units=64, num_blocks=2, num_up_blocks=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UpsampleEncoderConfig:
        _check_fields(cls, d)
        return cls(**d)


@dataclass(frozen=True)
class EstimatorConfig:
    """The flow-matching vector field (`flow.decoder.estimator`): a 1-D U-Net over `[x | mu | spks | cond]`.

    One resolution level in the published model (`channels=(256,)`): a resnet + transformer stage "down" (no
    actual downsampling at the last level), 12 middle stages, one "up" stage with a skip connection, then a final
    block and a 1x1 projection to the mel bins. All convolutions are causal (left-padded).
    """

    in_channels: int = 4 * MEL_BINS  # x, mu, speaker embedding (broadcast over time) and prompt cond, stacked
    out_channels: int = MEL_BINS
    channels: tuple[int, ...] = (256,)
    attention_head_dim: int = 64
    num_heads: int = 8
    n_blocks: int = 4  # transformer blocks per stage
    num_mid_blocks: int = 12

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.in_channels % 2:
            raise ValueError("EstimatorConfig: the sinusoidal time embedding needs an even in_channels")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.channels[0]

    @classmethod
    def tiny(cls) -> EstimatorConfig:
        return cls(channels=(32,), attention_head_dim=8, num_heads=2, n_blocks=1, num_mid_blocks=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EstimatorConfig:
        _check_fields(cls, d)
        return cls(**d)


@dataclass(frozen=True)
class CFMConfig:
    """Conditional flow matching at inference (`flow.decoder`): Euler steps on a cosine time grid, with CFG.

    The mean-flow model (`S3GenConfig.meanflow`) ignores both settings, as the reference does: linear grid, no CFG.
    """

    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    inference_cfg_rate: float = 0.7  # v = (1 + r) v(x | mu, spks, cond) - r v(x | 0, 0, 0)
    t_scheduler: str = "cosine"  # t = 1 - cos(pi/2 * s) for s evenly spaced in [0, 1]; "linear": t = s

    def __post_init__(self) -> None:
        if self.t_scheduler not in ("cosine", "linear"):
            raise ValueError(f"CFMConfig: unknown t_scheduler {self.t_scheduler!r}")

    @classmethod
    def tiny(cls) -> CFMConfig:
        return cls(estimator=EstimatorConfig.tiny())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CFMConfig:
        _check_fields(cls, d)
        d = dict(d)
        if isinstance(d.get("estimator"), dict):
            d["estimator"] = EstimatorConfig.from_dict(d["estimator"])
        return cls(**d)


@dataclass(frozen=True)
class FlowConfig:
    """Token-to-mel flow (`flow`): embedding, encoder, projection to mels, conditional flow-matching decoder."""

    vocab_size: int = SPEECH_VOCAB_SIZE
    mel_bins: int = MEL_BINS
    spk_embed_dim: int = 192  # CAMPPlus x-vector width
    encoder: UpsampleEncoderConfig = field(default_factory=UpsampleEncoderConfig)
    decoder: CFMConfig = field(default_factory=CFMConfig)
    n_timesteps: int = 10  # Euler steps of the flow-matching ODE at inference

    @property
    def token_mel_ratio(self) -> int:
        return self.encoder.upsample_stride

    @classmethod
    def tiny(cls) -> FlowConfig:
        return cls(encoder=UpsampleEncoderConfig.tiny(), decoder=CFMConfig.tiny())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlowConfig:
        _check_fields(cls, d)
        d = dict(d)
        if isinstance(d.get("encoder"), dict):
            d["encoder"] = UpsampleEncoderConfig.from_dict(d["encoder"])
        if isinstance(d.get("decoder"), dict):
            d["decoder"] = CFMConfig.from_dict(d["decoder"])
        return cls(**d)


@dataclass(frozen=True)
class S3GenConfig:
    """S3Gen = S3 tokenizer + CAMPPlus speaker encoder + token-to-mel flow + HiFT vocoder (module `mel2wav`)."""

    tokenizer: S3TokenizerConfig = field(default_factory=S3TokenizerConfig)
    speaker_encoder: CAMPPlusConfig = field(default_factory=CAMPPlusConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    hift: HiFTConfig = field(default_factory=HiFTConfig)  # the vocoder, module `mel2wav`
    sample_rate: int = S3GEN_SAMPLE_RATE
    # Mean-flow S3Gen (Turbo, Nano: `s3gen_meanflow.safetensors`, the reference's `S3Gen(meanflow=True)`): the
    # estimator also embeds the step's end time r (`time_embed_mixer`), and inference takes plain Euler steps on a
    # linear grid without CFG (`flow.n_timesteps` = 2 in `meanflow_model()`).
    meanflow: bool = False

    @property
    def trim_fade_samples(self) -> int:
        """The output starts with this many samples of silence, then as many of fade-in (20 ms each)."""
        return self.sample_rate // 50

    @classmethod
    def meanflow_model(cls) -> S3GenConfig:
        """The published mean-flow S3Gen of Turbo and Nano: 2 Euler steps (the reference's `n_cfm_timesteps=2`)."""
        return cls(flow=FlowConfig(n_timesteps=MEANFLOW_STEPS), meanflow=True)

    @classmethod
    def tiny(cls, meanflow: bool = False) -> S3GenConfig:
        flow = FlowConfig.tiny()
        if meanflow:
            flow = dataclasses.replace(flow, n_timesteps=MEANFLOW_STEPS)
        return cls(
            tokenizer=S3TokenizerConfig.tiny(),
            speaker_encoder=CAMPPlusConfig.tiny(),
            flow=flow,
            hift=HiFTConfig.tiny(),
            meanflow=meanflow,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> S3GenConfig:
        _check_fields(cls, d)
        d = dict(d)
        nested: dict[str, Any] = {
            "tokenizer": S3TokenizerConfig,
            "speaker_encoder": CAMPPlusConfig,
            "flow": FlowConfig,
            "hift": HiFTConfig,
        }
        for name, sub in nested.items():
            if isinstance(d.get(name), dict):
                d[name] = sub.from_dict(d[name])
        return cls(**d)
