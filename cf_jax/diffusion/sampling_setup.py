"""How a few-step causal generator samples, recorded in its checkpoint so `sample` needs no flags.

A Causal Forcing `.pt` does not say whether it is chunk- or frame-wise, nor its step list; the
released ones are named here (`RELEASED`, after the reference's configs/causal_forcing_dmd_*.yaml),
so one `--preset` tells `convert` all of it.
"""
import dataclasses
from typing import Any

from cf_jax.diffusion import streaming

FOUR_STEPS = streaming.STEP_LISTS[4]


@dataclasses.dataclass(frozen=True)
class SamplingSetup:
  """The released configs' sampling keys.

  Attributes:
    frames_per_block: 1 (frame-wise) or 3 (chunk-wise): num_frame_per_block.
    denoising_steps: unwarped step list (denoising_step_list), e.g. (1000, 750, 500, 250).
    first_block_denoising_steps: a separate list for the first block (Causal Forcing++ 1/2-step:
      denoising_step_list_first_chunk), or None.
    timestep_shift: the shift that warps the step lists (warp_denoising_step: true).
    causal: False for a bidirectional model, which the streaming sampler cannot run.
  """

  frames_per_block: int
  denoising_steps: tuple[int, ...]
  first_block_denoising_steps: tuple[int, ...] | None = None
  timestep_shift: float = 5.0
  causal: bool = True

  def __post_init__(self):
    if self.frames_per_block < 1:
      raise ValueError(f"frames_per_block must be ≥ 1, not {self.frames_per_block}")
    for steps in (self.denoising_steps, self.first_block_denoising_steps or (1000,)):
      if not steps or any(not 0 < d <= 1000 for d in steps) or list(steps) != sorted(steps, reverse=True):
        raise ValueError(f"step list {list(steps)} must be non-empty, decreasing, within (0, 1000]")

  def few_step_config(self, **kw) -> streaming.FewStepConfig:
    """The streaming sampler's settings (`kw`: capacity_frames, sink_frames, context_noise)."""
    if not self.causal:
      raise ValueError("this checkpoint is a bidirectional model; the streaming sampler needs a causal one")
    return streaming.FewStepConfig.from_step_lists(self.frames_per_block, self.denoising_steps,
                                                   self.first_block_denoising_steps, self.timestep_shift, **kw)

  def describe(self) -> str:
    layout = {1: "frame-wise", 3: "chunk-wise"}.get(self.frames_per_block, f"{self.frames_per_block} frames per block")
    out = f"{layout}, steps {','.join(map(str, self.denoising_steps))}"
    if self.first_block_denoising_steps:
      out += f" (first block {','.join(map(str, self.first_block_denoising_steps))})"
    return out + f", shift {self.timestep_shift:g}" + ("" if self.causal else ", bidirectional")

  def to_info(self) -> dict[str, Any]:
    """JSON-ready (lists for tuples), as checkpoints record it."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_info(cls, raw: dict[str, Any]) -> "SamplingSetup":
    fields = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(raw) - fields):
      raise ValueError(f"unknown sampling keys {unknown} in the checkpoint info")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

  @classmethod
  def from_train_config(cls, c) -> "SamplingSetup":
    """The setup a training stage's generator samples with: its config's layout and step lists
    (the released 4-step list for a stage without one, e.g. stage 1)."""
    first = c.dmd.get("first_block_denoising_steps") if "dmd" in c else None
    return cls(c.frames_per_block, tuple(c.get("denoising_steps", FOUR_STEPS)), tuple(first) if first else None,
               causal=c.get("causal", True))


@dataclasses.dataclass(frozen=True)
class Released:
  """A released Causal Forcing checkpoint: how it samples and the entry the reference's README
  loads (`--use_ema`: generator_ema)."""

  setup: SamplingSetup
  entry: str
  model: str = "t2v_1_3b"


RELEASED = {
    "chunkwise": Released(SamplingSetup(3, FOUR_STEPS), "generator"),  # chunkwise/causal_forcing.pt
    "framewise": Released(SamplingSetup(1, FOUR_STEPS), "generator_ema"),  # framewise/causal_forcing.pt
    "cfpp_2step": Released(SamplingSetup(1, (1000, 500), FOUR_STEPS), "generator_ema"),  # causal-forcing++/framewise-2step.pt
    "cfpp_1step": Released(SamplingSetup(1, (1000,), FOUR_STEPS), "generator_ema"),  # causal-forcing++/framewise-1step.pt
}
