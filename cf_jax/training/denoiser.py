"""A Wan DiT seen as the reference's diffusion wrapper: flow prediction plus its x0 conversion.

The reference converts flow to x0 with σ snapped on the calling wrapper's own 1000-step grid:
shift 5 for the generator (and the consistency student, teacher and target), shift 8 for the DMD
real and fake scores, which are built without the generator's `timestep_shift` (spec §1.6,
§11.2). `snap=False` uses the clean σ = t/1000 instead.
"""
import dataclasses
from typing import Any

import jax

from cf_jax.diffusion import flow_matching as fm
from cf_jax.models import wan

GENERATOR_SHIFT = 5.0
SCORE_SHIFT = 8.0


@dataclasses.dataclass(frozen=True)
class Denoiser:
  model: wan.WanModel
  layout: wan.Layout
  shift: float = GENERATOR_SHIFT
  snap: bool = True

  @property
  def grid(self) -> fm.FlowGrid:
    return fm.training_grid(self.shift)

  def flow(self, params: Any, x: jax.Array, t: jax.Array, context: jax.Array, **kw) -> jax.Array:
    """x [B, F, H, W, C], t [B, F] -> flow [B, F, H, W, C]. Bidirectional networks see one
    timestep per sample (the first frame's), as the reference wrapper passes them."""
    t_in = t if self.layout.causal else t[:, 0]
    return self.model.apply({"params": params}, x, t_in, context, self.layout, **kw)

  def x0(self, params: Any, x: jax.Array, t: jax.Array, context: jax.Array, **kw) -> tuple[jax.Array, jax.Array]:
    """(flow, x0 = x − σ(t)·flow), both [B, F, H, W, C]."""
    flow = self.flow(params, x, t, context, **kw)
    return flow, fm.flow_to_x0(x, flow, t, self.grid, self.snap)
