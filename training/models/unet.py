"""AudioLDM-M latent-diffusion UNet as used by ReWaS (``ControlledUnetModel``).

Parameter names are the original's (audioldm/diffusionmodules/openaimodel.py and
attention.py, audioldm/rewas.py) without ``model.diffusion_model.``, so a
released state dict loads strictly once that prefix is stripped. Only the paths
the released model takes are implemented: spatial transformers without a text
context, FiLM conditioning by concatenation, no scale-shift norm, dropout 0.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from training.models.config import ModelConfig


def ema_key_for(name: str) -> str:
    """Checkpoint key of the EMA copy of UNet parameter ``name`` (LitEma drops the dots)."""
    return "model_ema." + ("diffusion_model." + name).replace(".", "")


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, cosine half first as in the original."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def zero_module(module: nn.Module) -> nn.Module:
    # The original zero-initialises every layer that closes a residual or control
    # branch, so a freshly built adapter starts as a no-op on the UNet.
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    # Normalises in float32 whatever the activation dtype: the statistics overflow in fp16.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # Slot 2 is the original's Dropout (p=0): kept so parameter indices match.
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Identity(),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """The original's ``CrossAttention``; ReWaS gives it no context, so it attends to ``x`` itself."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))  # the original's trailing Dropout(0) is dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, H·D) -> (B, H, N, D); SDPA's default scale is dim_head^-0.5 like the original.
        q, k, v = (
            f(x).unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # Slot 1 is the original's Dropout (p=0): kept so parameter indices match.
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x)) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(inner, heads, dim_head) for _ in range(depth))
        self.proj_out = zero_module(nn.Conv2d(inner, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(self.norm(x))
        tokens = h.flatten(2).transpose(1, 2)  # (B, C, T, F) -> (B, T·F, C)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        h = tokens.transpose(1, 2).unflatten(2, h.shape[2:])
        return self.proj_out(h) + x


class TimestepEmbedSequential(nn.Sequential):
    """Sequential whose ResBlocks also receive the (time ‖ FiLM) embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


@dataclasses.dataclass(kw_only=True)
class EncoderConfig(ModelConfig):
    """Hyper-parameters the UNet and the adapter share, named as in the original yaml."""

    image_size: int  # carried by the original config; the network does not use it
    in_channels: int
    model_channels: int
    attention_resolutions: list[int]
    num_res_blocks: int
    channel_mult: list[int]
    num_head_channels: int
    transformer_depth: int = 1
    extra_film_condition_dim: int = 512
    use_spatial_transformer: bool = True
    extra_sa_layer: bool = False
    # Only changes the head width when a level's channels are not a multiple of num_head_channels.
    legacy: bool = True

    def __post_init__(self):
        if not self.use_spatial_transformer:
            raise NotImplementedError("only the spatial-transformer attention of the released model is implemented")

    @classmethod
    def from_reference(cls, params: dict):
        """From a reference ``config.json``'s constructor ``params``."""
        return cls.from_dict(params)


def rewas_m_shared() -> dict:
    """Released AudioLDM-M sizes (configs/audioldm_m_rewas.yaml), shared by UNet and adapter."""
    return dict(
        image_size=64,
        in_channels=8,
        model_channels=192,
        attention_resolutions=[8, 4, 2],
        num_res_blocks=2,
        channel_mult=[1, 2, 3, 5],
        num_head_channels=32,
        transformer_depth=1,
        extra_film_condition_dim=512,
        use_spatial_transformer=True,
        extra_sa_layer=False,
    )


@dataclasses.dataclass(kw_only=True)
class UNetConfig(EncoderConfig):
    out_channels: int

    @classmethod
    def rewas_m(cls) -> UNetConfig:
        return cls(**rewas_m_shared(), out_channels=8)


def attention_layers(cfg: EncoderConfig, channels: int) -> list[nn.Module]:
    heads = channels // cfg.num_head_channels
    dim_head = channels // heads if cfg.legacy else cfg.num_head_channels
    # Without a text context the optional extra self-attention layer and the
    # "cross-attention" one are the same module: both attend to the latent itself.
    return [
        SpatialTransformer(channels, heads, dim_head, cfg.transformer_depth)
        for _ in range(2 if cfg.extra_sa_layer else 1)
    ]


class UNetEncoder(nn.Module):
    """Embeddings, input blocks and middle block: the part the adapter copies."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, 4 * mc), nn.SiLU(), nn.Linear(4 * mc, 4 * mc))
        self.film_emb = nn.Linear(cfg.extra_film_condition_dim, 4 * mc)
        # Time and FiLM embeddings are concatenated, not summed: ResBlocks see 8·mc.
        self.emb_channels = emb_ch = 8 * mc

        blocks = [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))]
        self.input_block_chans = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb_ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention_layers(cfg, ch)
                blocks.append(TimestepEmbedSequential(*layers))
                self.input_block_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(Downsample(ch)))
                self.input_block_chans.append(ch)
                ds *= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_ch), *attention_layers(cfg, ch), ResBlock(ch, emb_ch)
        )

    def embed(self, timesteps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        return torch.cat([t_emb, self.film_emb(y)], dim=-1)


class UNet(UNetEncoder):
    """ReWaS ``ControlledUnetModel``: ε prediction, optionally steered by adapter controls."""

    def __init__(self, cfg: UNetConfig):
        super().__init__(cfg)
        mc, emb_ch = cfg.model_channels, self.emb_channels
        skip_chans = list(self.input_block_chans)
        ch = skip_chans[-1]
        ds = 2 ** (len(cfg.channel_mult) - 1)
        blocks = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention_layers(cfg, ch)
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                blocks.append(TimestepEmbedSequential(*layers))
        self.output_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        y: torch.Tensor,
        control: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B,C,T,F), integer timesteps (B,), FiLM embedding y (B,512) -> ε like x.

        ``control`` is the adapter's output list, consumed from its end: the
        last entry goes to the middle block, the others to the skip connections.
        """
        emb = self.embed(timesteps, y)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        if control is not None:
            control = list(control)  # popped like the original, without emptying the caller's list
            h = h + control.pop()
        for block in self.output_blocks:
            skip = hs.pop()
            if control is not None:
                skip = skip + control.pop()
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(h)
