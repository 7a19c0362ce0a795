"""The stage losses against the reference fixtures (files c' and f) and against independent
computations: stage-1 teacher-forcing loss and its gradients, the DMD generator loss with every
intermediate, the critic loss, and the self-forcing rollout's gradient."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cf_jax.convert import wan as convert_wan
from cf_jax.diffusion import flow_matching as fm
from cf_jax.models import wan
from cf_jax.models.config import WanConfig
from cf_jax.training import ar_diffusion
from cf_jax.training import consistency
from cf_jax.training import dmd
from cf_jax.training import losses
from cf_jax.training import rollout as rollout_lib
from cf_jax.training.denoiser import SCORE_SHIFT, Denoiser
from tests.conftest import FIXTURES, load_fixture

CFG = WanConfig.tiny()
ATOL = 1e-5


def cl(a):  # [B, F, C, H, W] -> [B, F, H, W, C]
  return np.moveaxis(a, 2, -1)


def max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.cache
def weights(entry: str = "generator"):
  return convert_wan.load_params(FIXTURES / "wan_tiny.pt", CFG, entry)


def causal(frames_per_block: int) -> Denoiser:
  return Denoiser(wan.WanModel(CFG), wan.Layout.block_causal(frames_per_block))


def score() -> Denoiser:
  return Denoiser(wan.WanModel(CFG), wan.Layout.bidirectional(), SCORE_SHIFT)


# -- stage 1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_teacher_forcing_loss_matches_reference(k):
  d = load_fixture("tf_loss")
  p = f"tfloss_nfpb{k}_"
  grid = fm.training_grid()
  t = grid.timesteps[losses.tie_to_blocks(jnp.asarray(d[p + "index_drawn"]), k)]
  np.testing.assert_array_equal(t, d[p + "timestep"])
  x_t = fm.add_noise(cl(d["clean_latents"]), cl(d[p + "noise"]), t, grid)
  assert max_err(x_t, cl(d[p + "noisy_latents"])) < 1e-6
  assert max_err(fm.training_weight(grid, fm.training_weights(grid), t), d[p + "training_weight"]) < 1e-6

  loss_fn = functools.partial(ar_diffusion.loss, causal(k), bf16_timesteps=False)
  loss, _ = jax.jit(loss_fn)(weights(), cl(d["clean_latents"]), d["prompt_embeds"], cl(d[p + "noise"]),
                             d[p + "index_drawn"])
  assert abs(float(loss) - float(d[p + "loss"][0])) < ATOL


def test_teacher_forcing_loss_gradients_match_reference():
  d = load_fixture("tf_loss")
  p = "tfloss_nfpb3_"

  def loss_fn(params):
    return ar_diffusion.loss(causal(3), params, cl(d["clean_latents"]), d["prompt_embeds"], cl(d[p + "noise"]),
                             d[p + "index_drawn"], bf16_timesteps=False)[0]

  grads = jax.jit(jax.grad(loss_fn))(weights())
  reference = load_fixture("tfloss_nfpb3_grads")
  ours = convert_wan.params_to_torch(grads, CFG)
  assert ours.keys() == reference.keys()
  errors = {k: max_err(ours[k], reference[k]) for k in ours}
  worst = max(errors, key=errors.get)
  assert errors[worst] < 1e-4, (worst, errors[worst])


# -- stage 3: DMD ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["nomask", "mask"])
def test_dmd_generator_loss_matches_reference(variant):
  d = load_fixture("dmd")
  p = f"dmd_{variant}_"
  image = cl(d["image_or_video"])
  t = jnp.broadcast_to(fm.dmd_timestep(d[p + "timestep_int_drawn"][:, 0])[:, None], (2, 6))
  np.testing.assert_allclose(t, d[p + "timestep"], rtol=1e-7)
  x_t = fm.add_noise(image, cl(d[p + "noise"]), t, fm.training_grid(5.0))
  assert max_err(x_t, cl(d[p + "noisy_latents"])) < 1e-6

  fake, real = score(), score()
  _, fake_x0 = jax.jit(fake.x0)(weights("generator_ema"), x_t, t, d["cond_prompt_embeds"])
  _, cond_x0 = jax.jit(real.x0)(weights("generator"), x_t, t, d["cond_prompt_embeds"])
  _, uncond_x0 = jax.jit(real.x0)(weights("generator"), x_t, t, d["uncond_prompt_embeds"])
  for ours, name in ((fake_x0, "pred_fake_x0"), (cond_x0, "pred_real_cond_x0"), (uncond_x0, "pred_real_uncond_x0")):
    assert max_err(ours, cl(d[p + name])) < ATOL, name

  parts = losses.dmd_gradient(image, fake_x0, cond_x0, uncond_x0, guidance_scale=3.0)
  assert max_err(parts["real_cfg_x0"], cl(d[p + "pred_real_cfg_x0"])) < 4 * ATOL
  assert max_err(parts["normalizer"][:, 0, 0, 0, 0], d[p + "normalizer"].reshape(2)) < ATOL
  assert max_err(parts["grad"], cl(d[p + "grad_normalized"])) < 4 * ATOL

  mask = cl(d[p + "gradient_mask"]) if variant == "mask" else None
  loss, grad = jax.value_and_grad(losses.dmd_loss)(image, jax.lax.stop_gradient(parts["grad"]), mask)
  assert abs(float(loss) - float(d[p + "loss"][0])) < 1e-3 * float(d[p + "loss"][0])
  assert max_err(grad, cl(d[p + "dloss_dimage"])) < 1e-3 * np.abs(d[p + "dloss_dimage"]).max()


def test_dmd_generator_loss_function_wires_the_scores():
  """dmd.generator_loss (the trainer's) = the pieces above, and its gradient is Δ / N."""
  d = load_fixture("dmd")
  image = cl(d["image_or_video"])
  t = jnp.asarray(d["dmd_nomask_timestep"])
  x_t = cl(d["dmd_nomask_noisy_latents"])
  fn = functools.partial(dmd.generator_loss, x_t=x_t, t=t, context=d["cond_prompt_embeds"],
                         negative=d["uncond_prompt_embeds"], critic=score(), critic_params=weights("generator_ema"),
                         real=score(), real_params=weights("generator"), guidance_scale=3.0)
  (loss, metrics), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(image)
  assert abs(float(loss) - float(d["dmd_nomask_loss"][0])) < 1e-3 * float(d["dmd_nomask_loss"][0])
  assert max_err(grad, cl(d["dmd_nomask_dloss_dimage"])) < 1e-3 * np.abs(d["dmd_nomask_dloss_dimage"]).max()
  assert abs(float(metrics["dmdtrain_gradient_norm"]) - float(d["dmd_nomask_dmdtrain_gradient_norm"][0])) < 1e-4


def test_critic_loss_matches_reference():
  d = load_fixture("dmd")
  generated = cl(d["critic_generated_image"])
  t = jnp.broadcast_to(fm.dmd_timestep(d["critic_timestep_int_drawn"][:, 0])[:, None], (2, 6))
  np.testing.assert_allclose(t, d["critic_timestep"], rtol=1e-7)
  noise = cl(d["critic_noise"])
  x_t = fm.add_noise(generated, noise, t, fm.training_grid(5.0))
  assert max_err(x_t, cl(d["critic_noisy_latents"])) < 1e-6
  critic = score()
  flow, x0 = jax.jit(critic.x0)(weights("generator_ema"), x_t, t, d["cond_prompt_embeds"])
  assert max_err(flow, cl(d["critic_fake_flow_pred_raw"])) < ATOL
  assert max_err(x0, cl(d["critic_fake_x0_pred"])) < ATOL
  reconverted = fm.x0_to_flow(x_t, x0, t, fm.training_grid(5.0))
  assert max_err(reconverted, cl(d["critic_flow_pred_reconverted"])) < 1e-4
  loss = jax.jit(dmd.critic_loss, static_argnums=0)(
      critic, weights("generator_ema"), generated, x_t, t, noise, d["cond_prompt_embeds"])
  assert abs(float(loss) - float(d["critic_loss"][0])) < ATOL


def test_dmd_loss_gradient_is_the_normalized_direction():
  key = jax.random.key(0)
  x, g = jax.random.normal(key, (2, 2, 3, 3, 4)), jax.random.normal(jax.random.key(1), (2, 2, 3, 3, 4))
  np.testing.assert_allclose(jax.grad(losses.dmd_loss)(x, g), g / x.size, rtol=1e-4, atol=1e-8)  # x − (x − g) in fp32
  inf = losses.dmd_gradient(x, x + 1.0, x, x, 3.0)["grad"]  # x0_real = x: a zero normalizer
  assert np.all(np.isfinite(inf)) and np.all(inf == 0.0)


# -- the self-forcing rollout --------------------------------------------------------------------


@pytest.mark.parametrize("k,first", [(3, None), (2, (1000.0, 937.5, 833.3333, 625.0))])
def test_exit_forward_reproduces_the_rollout_and_its_truncated_gradient(k, first):
  """One teacher-forcing forward over the rollout's records gives the rollout's output, and the
  gradient the reference gets from per-block exit forwards over a cache without gradient."""
  d = load_fixture("dmd")
  gen = causal(k)
  params = weights()
  context = d["cond_prompt_embeds"]
  noise = cl(d["image_or_video"])
  steps = (1000.0, 833.3333) if first else (1000.0, 937.5, 833.3333, 625.0)
  exits = (jnp.int32(2 if first else 1), jnp.int32(1))
  roll = jax.jit(rollout_lib.self_forcing_rollout, static_argnums=(0, 4, 5))(
      gen, params, context, noise, steps, first, exits, jax.random.key(3))
  assert roll.exit_t[0, 0] == (first or steps)[int(exits[0])]
  out = jax.jit(rollout_lib.exit_forward, static_argnums=0)(gen, params, context, roll)
  assert max_err(out, roll.output) < ATOL

  probe = jax.random.normal(jax.random.key(4), noise.shape)

  def via_exit_forward(p):
    return jnp.sum(rollout_lib.exit_forward(gen, p, context, roll) * probe)

  def via_blocks(p):
    """Block by block over a cache of the recorded cache inputs whose self-attention keys/values
    carry no gradient; the text keys/values do (the reference recomputes them in every call
    under gradient checkpointing, spec §11.27)."""
    model, grid = gen.model, gen.grid
    text = wan.WanTextCache(CFG).apply({"params": p}, context)
    cache = rollout_lib.KVCache.create(text, noise.shape[1], CFG.tokens_per_frame(8, 8))
    total = 0.0
    for start in range(0, noise.shape[1], k):
      x, t = roll.exit_input[:, start:start + k], roll.exit_t[:, start:start + k]
      frozen = cache.replace(k=jax.lax.stop_gradient(cache.k), v=jax.lax.stop_gradient(cache.v))
      flow, _ = model.apply({"params": p}, x, t, None, kv_cache=frozen, start_frame=start)
      total += jnp.sum(fm.flow_to_x0(x, flow, t, grid) * probe[:, start:start + k])
      clean = roll.cache_input[:, start:start + k]
      _, cache = model.apply({"params": jax.lax.stop_gradient(p)}, clean, jnp.zeros(clean.shape[:2]), None,
                             kv_cache=cache, start_frame=start)
    return total

  g_tf = jax.jit(jax.grad(via_exit_forward))(params)
  g_blocks = jax.jit(jax.grad(via_blocks))(params)
  errs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12)),
                                      g_tf, g_blocks))
  assert max(errs) < 1e-4


@pytest.mark.parametrize("k,first,exits", [(3, None, (0, 3)), (2, (1000.0, 937.5, 833.3333, 625.0), (3, 1))])
def test_scanned_rollout_equals_the_rollout_written_out(k, first, exits):
  """The rollout (a scan over blocks) against the same rollout written out block by block and
  step by step with the same noise streams: equal records, and the same generator gradient
  through the exit forward over them."""
  d = load_fixture("dmd")
  gen, params = causal(k), weights()
  context, noise = d["cond_prompt_embeds"], cl(d["image_or_video"])
  steps = (1000.0, 833.3333) if first else (1000.0, 937.5, 833.3333, 625.0)
  key = jax.random.key(5)

  def unrolled(params):  # op by op: jitted, its written-out graph compiles slower than it runs
    model, grid = gen.model, gen.grid
    text = wan.WanTextCache(CFG).apply({"params": params}, context)
    cache = rollout_lib.KVCache.create(text, noise.shape[1], CFG.tokens_per_frame(8, 8))

    def call(cache, x, t, start):
      t = jnp.full(x.shape[:2], t)
      flow, cache = gen.model.apply({"params": params}, x, t, None, kv_cache=cache, start_frame=start)
      return fm.flow_to_x0(x, flow, t, grid), cache

    records = []
    for b, start in enumerate(range(0, noise.shape[1], k)):
      timesteps, exit_index = (first or steps, exits[0]) if b == 0 else (steps, exits[1])
      step_key, cache_key = jax.random.split(jax.random.fold_in(key, b))
      x = noise[:, start:start + k]
      for i in range(exit_index):
        x0, cache = call(cache, x, timesteps[i], start)
        eps = jax.random.normal(jax.random.fold_in(step_key, i), x.shape)
        x = fm.add_noise(x0, eps, jnp.full(x.shape[:2], timesteps[i + 1]), grid)
      x0, cache = call(cache, x, timesteps[exit_index], start)
      x_cache = fm.add_noise(x0, jax.random.normal(cache_key, x0.shape), jnp.zeros(x0.shape[:2]), grid)
      _, cache = call(cache, x_cache, 0.0, start)
      records.append((x0, x, jnp.full(x0.shape[:2], timesteps[exit_index]), x_cache))
    return rollout_lib.Rollout(*(jnp.concatenate(r, axis=1) for r in zip(*records)))

  def scanned(params):
    return rollout_lib.self_forcing_rollout(gen, params, context, noise, steps, first,
                                            tuple(map(jnp.int32, exits)), key)

  want, got = unrolled(params), jax.jit(scanned)(params)
  for name in ("output", "exit_input", "exit_t", "cache_input"):
    assert max_err(getattr(got, name), getattr(want, name)) < ATOL, name

  probe = jax.random.normal(jax.random.key(4), noise.shape)
  loss = lambda p, rollout: jnp.sum(rollout_lib.exit_forward(gen, p, context, rollout) * probe)
  g_scan = jax.jit(jax.grad(lambda p: loss(p, scanned(p))))(params)  # the rollout itself carries none
  g_unrolled = jax.jit(jax.grad(lambda p: loss(p, want)))(params)
  errs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12)),
                                      g_scan, g_unrolled))
  assert max(errs) < 1e-4


def test_rollout_cache_input_snaps_context_noise_like_the_reference():
  gen = causal(3)
  d = load_fixture("dmd")
  args = (gen, weights(), d["cond_prompt_embeds"], cl(d["image_or_video"]), (1000.0,), None,
          (jnp.int32(0), jnp.int32(0)), jax.random.key(0))
  snapped = rollout_lib.self_forcing_rollout(*args, snap_context_noise=True)
  exact = rollout_lib.self_forcing_rollout(*args, snap_context_noise=False)
  np.testing.assert_array_equal(exact.cache_input, exact.output)
  sigma = float(fm.training_grid().sigmas[-1])  # t = 0 snaps to the smallest grid σ, 0.00498
  eps = (snapped.cache_input - (1 - sigma) * snapped.output) / sigma
  assert 0.8 < float(jnp.std(eps)) < 1.2


# -- stage 2b --------------------------------------------------------------------------------------


def test_consistency_loss_is_student_vs_ema_target_after_a_guided_teacher_step():
  d = load_fixture("tf_loss")
  gen = causal(3)
  student, teacher, target = weights(), weights("generator_ema"), weights()
  x0, context = cl(d["clean_latents"]), d["prompt_embeds"]
  negative = jnp.zeros_like(context)
  noise = cl(d["tfloss_nfpb3_noise"])
  k = 12
  loss, _ = consistency.loss(gen, student, teacher, target, x0, context, negative, noise, jnp.int32(k), 3.0,
                             bf16_timesteps=True)
  # Independently: bf16 timesteps 937.5 → 936 and 930.85 → 932 (spacing 4), σ of x_t exact.
  grid = fm.ode_grid()
  t, t_next = 936.0, 932.0
  assert float(fm.bf16_round(grid.timesteps[k])) == t and float(fm.bf16_round(grid.timesteps[k + 1])) == t_next
  x_t = (1 - grid.sigmas[k]) * x0 + grid.sigmas[k] * noise
  full = lambda v: jnp.full((2, 6), v)
  v_c = gen.flow(teacher, x_t, full(t), context, clean_x=x0)
  v_u = gen.flow(teacher, x_t, full(t), negative, clean_x=x0)
  x_next = x_t - (t - t_next) / 1000 * (v_u + 3.0 * (v_c - v_u))
  sig = lambda v: float(fm.sigma_at(fm.training_grid(), v))
  x0_s = x_t - sig(t) * gen.flow(student, x_t, full(t), context, clean_x=x0)
  x0_t = x_next - sig(t_next) * gen.flow(target, x_next, full(t_next), context, clean_x=x0)
  assert abs(float(loss) - float(jnp.mean((x0_s - x0_t) ** 2))) < 1e-5 * float(loss)
