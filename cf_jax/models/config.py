"""`WanConfig`: the architecture of a Wan2.1 DiT, with presets (spec: architecture.md §2.1, §7)."""
import dataclasses
import json
import pathlib

from cf_jax.errors import UserError

# How diffusers names the Wan2.1 DiT and its query/key norm in `transformer/config.json`.
DIFFUSERS_CLASS = "WanTransformer3DModel"
DIFFUSERS_QK_NORM = "rms_norm_across_heads"
DIFFUSERS_VERSION = "0.33.1"  # the version recorded in configs this package writes


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
  def from_json(cls, path: str | pathlib.Path) -> "WanConfig":
    """Reads a Wan2.1 `config.json` or a diffusers `transformer/config.json`, told apart by their keys."""
    raw = _read_json(path)
    if raw.get("_class_name") == DIFFUSERS_CLASS or "num_attention_heads" in raw:
      return cls.from_diffusers_dict(raw, path)
    if raw.get("_class_name", "WanModel") != "WanModel":
      raise UserError(f"{path} describes {raw['_class_name']}, neither a Wan2.1 WanModel nor a diffusers "
                       f"{DIFFUSERS_CLASS}; point --src at the DiT's weights")
    return cls.from_wan_json(path)

  @classmethod
  def from_diffusers_dict(cls, raw: dict, source: str | pathlib.Path = "config") -> "WanConfig":
    """A diffusers `WanTransformer3DModel` config: dim = num_attention_heads · attention_head_dim.

    The text length is the pipelines' max_sequence_length (512), not in the file; a `text_len`
    key, which configs of other lengths written by `to_diffusers_dict` carry, is honoured.
    """
    if raw.get("_class_name", DIFFUSERS_CLASS) != DIFFUSERS_CLASS:
      raise UserError(f"{source}: _class_name {raw['_class_name']!r} is not {DIFFUSERS_CLASS} (only Wan2.1 T2V)")
    for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
      if raw.get(key) is not None:
        raise UserError(f"{source}: {key}={raw[key]} belongs to an image-conditioned Wan model; only T2V is supported")
    if raw.get("qk_norm") not in (None, DIFFUSERS_QK_NORM):
      raise UserError(f"{source}: qk_norm {raw['qk_norm']!r} is not supported (only {DIFFUSERS_QK_NORM!r} or null)")
    default = cls()
    heads = raw.get("num_attention_heads", default.num_heads)
    return cls(
        dim=heads * raw.get("attention_head_dim", default.head_dim), num_heads=heads,
        ffn_dim=raw.get("ffn_dim", default.ffn_dim), num_layers=raw.get("num_layers", default.num_layers),
        in_dim=raw.get("in_channels", default.in_dim), out_dim=raw.get("out_channels", default.out_dim),
        text_dim=raw.get("text_dim", default.text_dim), freq_dim=raw.get("freq_dim", default.freq_dim),
        patch_size=tuple(raw.get("patch_size", default.patch_size)), eps=raw.get("eps", default.eps),
        qk_norm=raw.get("qk_norm", DIFFUSERS_QK_NORM) is not None,
        cross_attn_norm=raw.get("cross_attn_norm", default.cross_attn_norm),
        text_len=raw.get("text_len", default.text_len),
    )

  def to_diffusers_dict(self) -> dict:
    """The `transformer/config.json` diffusers writes for this architecture, with `text_len` only
    where it differs from the pipelines' 512 (diffusers ignores the extra key)."""
    config = {
        "_class_name": DIFFUSERS_CLASS, "_diffusers_version": DIFFUSERS_VERSION, "added_kv_proj_dim": None,
        "attention_head_dim": self.head_dim, "cross_attn_norm": self.cross_attn_norm, "eps": self.eps,
        "ffn_dim": self.ffn_dim, "freq_dim": self.freq_dim, "image_dim": None, "in_channels": self.in_dim,
        "num_attention_heads": self.num_heads, "num_layers": self.num_layers, "out_channels": self.out_dim,
        "patch_size": list(self.patch_size), "pos_embed_seq_len": None,
        "qk_norm": DIFFUSERS_QK_NORM if self.qk_norm else None, "rope_max_seq_len": 1024, "text_dim": self.text_dim,
    }
    if self.text_len != WanConfig.text_len:
      config["text_len"] = self.text_len
    return config

  @classmethod
  def from_wan_json(cls, path: str | pathlib.Path) -> "WanConfig":
    """Reads a Wan2.1 `config.json`.

    Wan's own loader ignores `patch_size`, `text_dim`, `qk_norm` and `cross_attn_norm` in the file
    and uses its defaults; released files omit them. They are honoured here when present, so
    small test models can be described by the same file format.
    """
    raw = _read_json(path)
    if raw.get("model_type", "t2v") != "t2v":
      raise UserError(f"{path}: model_type {raw['model_type']!r} is not supported (only t2v)")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in raw.items() if k in fields}
    if "patch_size" in kwargs:
      kwargs["patch_size"] = tuple(kwargs["patch_size"])
    return cls(**kwargs)


def _read_json(path: str | pathlib.Path) -> dict:
  try:
    raw = json.loads(pathlib.Path(path).read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is not a readable config.json ({e})") from None
  if not isinstance(raw, dict):
    raise UserError(f"{path} holds no JSON object")
  return raw


PRESETS = {"t2v_1_3b": WanConfig.t2v_1_3b, "t2v_14b": WanConfig.t2v_14b, "tiny": WanConfig.tiny, "toy": WanConfig.toy}
