"""`WanConfig`: the architecture of a Wan2.1 DiT, with presets (spec: architecture.md §2.1, §7)."""
import dataclasses
import json
import pathlib

from cf_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class WanConfig:
  """Architecture hyper-parameters. Names follow Wan2.1's `config.json`."""

  dim: int = 1536
  ffn_dim: int = 8960
  num_heads: int = 12
  num_layers: int = 30
  in_dim: int = 16
  out_dim: int = 16
  text_dim: int = 4096
  text_len: int = 512
  freq_dim: int = 256
  patch_size: tuple[int, int, int] = (1, 2, 2)
  eps: float = 1e-6
  qk_norm: bool = True
  cross_attn_norm: bool = True

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise UserError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
    if self.head_dim % 2:
      raise UserError(f"head_dim {self.head_dim} must be even for RoPE")
    if self.patch_size[0] != 1:
      raise UserError(
          f"patch_size {self.patch_size}: the temporal patch must be 1, since timesteps and "
          "causal blocks are per latent frame (every Wan2.1 model uses (1, 2, 2))"
      )
    if self.freq_dim % 2:
      raise UserError(f"freq_dim {self.freq_dim} must be even (cos and sin halves)")

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def patch_features(self) -> int:
    """Values in one patch: in_dim · pt · ph · pw."""
    pt, ph, pw = self.patch_size
    return self.in_dim * pt * ph * pw

  def tokens_per_frame(self, height: int, width: int) -> int:
    """S: tokens of one latent frame of the given latent height and width."""
    _, ph, pw = self.patch_size
    if height % ph or width % pw:
      raise UserError(f"latent size {height}x{width} is not divisible by the patch {ph}x{pw}")
    return (height // ph) * (width // pw)

  @classmethod
  def t2v_1_3b(cls) -> "WanConfig":
    """Wan2.1-T2V-1.3B: the Causal Forcing generator and fake score (1,418,996,800 params)."""
    return cls()

  @classmethod
  def t2v_14b(cls) -> "WanConfig":
    """Wan2.1-T2V-14B: the DMD real score (14,288,491,584 params)."""
    return cls(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

  @classmethod
  def toy(cls) -> "WanConfig":
    """The toy recipe's model: 4-channel videos, 4 text tokens, 2 layers of width 64."""
    return cls(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, text_len=4,
               freq_dim=64)

  @classmethod
  def tiny(cls) -> "WanConfig":
    """The reference fixtures' model: 2 layers, width 128, 4 heads of 32."""
    return cls(dim=128, ffn_dim=256, num_heads=4, num_layers=2, text_dim=64, text_len=16)

  @classmethod
  def from_preset(cls, name: str) -> "WanConfig":
    if name not in PRESETS:
      raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()

  @classmethod
  def from_wan_json(cls, path: str | pathlib.Path) -> "WanConfig":
    """Reads a Wan2.1 `config.json`.

    Wan's own loader ignores `patch_size`, `text_dim`, `qk_norm` and `cross_attn_norm` in the file
    and uses its defaults; released files omit them. They are honoured here when present, so
    small test models can be described by the same file format.
    """
    raw = json.loads(pathlib.Path(path).read_text())
    if raw.get("model_type", "t2v") != "t2v":
      raise UserError(f"{path}: model_type {raw['model_type']!r} is not supported (only t2v)")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in raw.items() if k in fields}
    if "patch_size" in kwargs:
      kwargs["patch_size"] = tuple(kwargs["patch_size"])
    return cls(**kwargs)


PRESETS = {"t2v_1_3b": WanConfig.t2v_1_3b, "t2v_14b": WanConfig.t2v_14b, "tiny": WanConfig.tiny, "toy": WanConfig.toy}
