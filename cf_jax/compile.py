"""Ahead-of-time compile a stage's updates for a TPU topology, on any host: does it fit, how fast.

  python -m cf_jax.compile --config configs/ar_diffusion_chunkwise.py --topology v5p:2x4x4 \\
      --config.mesh.data=1 --config.mesh.fsdp=32
  python -m cf_jax.compile --config configs/dmd_chunkwise.py:tiny --topology v6e:2x2 --sampler

Every update of the stage (DMD: generator and critic) is built by the trainer's own set-up
(`training.program`: same functions, shardings and donation), lowered against compile-only devices
of the topology (libtpu, the `tpu` extra) and compiled by the TPU compiler. Per update it prints
the compile time, the per-chip memory of `memory_analysis()` against the chip's HBM, XLA's FLOP
count (a scanned layer body is counted once, so it reads far low) beside the analytic count of
`cf_jax.flops`, and the step time that count projects at the chip's bf16 peak and at 40% MFU. The
last line per update is

  compile: <stage>/<update> <topology> ok hbm <X.X>/<Y> GB mfu_at_40pct_step <Z.ZZ> s

or `... FAIL <reason>`. Each update compiles in its own process, so a compiler abort (SIGABRT)
fails that update only; the exit status is non-zero if any update fails to compile or to fit.
`--jobs N` runs N of those processes at once (their output is printed update by update).
With --sampler the streaming sampler's per-block step (batch 1, one chip, the last block of a
full cache) is compiled too.
"""
import concurrent.futures
import os
import pathlib
import subprocess
import sys
import time

# Compiling needs no live accelerator: even on a TPU VM the host's own devices are left alone.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cf_jax import cli  # noqa: E402
from cf_jax import flops  # noqa: E402
from cf_jax import parallel  # noqa: E402
from cf_jax import topology as topology_lib  # noqa: E402
from cf_jax.training import program as program_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config (configs/<stage>.py[:tiny]).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x4x4, v6e:16x16, v6e:1x1.")
_SAMPLER = flags.DEFINE_bool("sampler", False, "Also compile the streaming sampler's per-block step.")
_JOBS = flags.DEFINE_integer("jobs", 1, lower_bound=1,
                             help="Updates compiled at once, each child process on a core of its own (the TPU "
                                  "compiler uses about one) and with its own compile's memory.")
_ONLY = flags.DEFINE_string("only", None, "Compile this one update (or 'sampler') in this process; "
                            "used by the parent process, one child per update.")
flags.mark_flags_as_required(["config", "topology"])

MFU = 0.4
SAMPLER = "sampler"


def stage_name() -> str:
  """The config file's stem: dmd_chunkwise, ar_diffusion_framewise, ..."""
  return pathlib.Path(flags.FLAGS["config"].config_filename).stem


def memory_gb(compiled) -> dict[str, float]:
  """Per-chip bytes of a compiled program, in GB: live at once = arguments + outputs − donated
  aliases + temporaries."""
  m = compiled.memory_analysis()
  parts = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes}
  parts["total"] = parts["arguments"] + parts["outputs"] - parts["aliased"] + parts["temporaries"]
  return {k: v / 1e9 for k, v in parts.items()}


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))


def report(name: str, topology: str, compiled, compile_s: float, analytic_flops: float, num_chips: int) -> bool:
  """Prints the figures of one compiled update; True when it fits the chip's HBM."""
  generation, _ = topology_lib.parse(topology)
  chip = topology_lib.chip(generation)
  peak = flops.PEAK_TFLOPS[chip.device_kind] * 1e12
  mem = memory_gb(compiled)
  fits = mem["total"] < chip.hbm_gb
  per_chip = analytic_flops / num_chips
  print(f"  compile {compile_s:.1f} s")
  print("  memory per chip (GB): " + ", ".join(f"{k} {v:.4g}" for k, v in mem.items())
        + f" of {chip.hbm_gb:g} HBM" + ("" if fits else "  DOES NOT FIT"))
  print(f"  FLOPs per chip: XLA {xla_flops(compiled) / 1e12:.4g} T (a scanned layer body counted once), "
        f"analytic {per_chip / 1e12:.4g} T")
  print(f"  step at {chip.device_kind} bf16 peak ({peak / 1e12:g} TFLOP/s): {per_chip / peak:.4g} s; "
        f"at {MFU:.0%} MFU: {per_chip / (MFU * peak):.4g} s")
  verdict = "ok" if fits else "FAIL does not fit HBM"
  print(f"compile: {name} {topology} {verdict} hbm {mem['total']:.1f}/{chip.hbm_gb:g} GB "
        f"mfu_at_40pct_step {per_chip / (MFU * peak):.2f} s", flush=True)
  return fits


def compile_update(config, topology: str, update: str) -> bool:
  devices = topology_lib.compile_only_devices(topology)
  mesh = parallel.make_mesh(**config.mesh, devices=devices)
  program = program_lib.build_program(config, mesh)
  name = f"{stage_name()}/{update}"
  print(f"{name} on {topology} ({len(devices)} chips, mesh {dict(mesh.shape)}, batch {config.batch_size}, "
        f"{config.attention_backend} attention, remat {config.remat_policy})", flush=True)
  models = {n: net.model.config for n, net in program.stage.networks.items()}
  tokens = models["generator"].tokens_per_frame(config.data.latent_height, config.data.latent_width)
  analytic = flops.training_update_flops(config, models, tokens)[update]
  start = time.perf_counter()
  with program.mesh_context():
    compiled = program.updates[update].lower(*program.update_args()).compile()
  return report(name, topology, compiled, time.perf_counter() - start, analytic, len(devices))


def compile_sampler(config, topology: str) -> bool:
  """The streaming sampler's per-block step on one chip of the topology, batch 1, the generator
  in the config's compute dtype, at the last block of a full cache (the largest attention)."""
  from cf_jax.diffusion import streaming  # pylint: disable=g-import-not-at-top
  from cf_jax.models import wan  # pylint: disable=g-import-not-at-top

  device = topology_lib.compile_only_devices(topology)[0]
  one_chip = jax.sharding.SingleDeviceSharding(device)
  stage = program_lib.make_stage(config)
  net = stage.networks["generator"]
  dtype = jnp.dtype(config.compute_dtype)
  model = wan.WanModel(net.model.config, dtype=dtype, param_dtype=dtype, attention_backend=config.attention_backend)
  cfg = model.config
  data = config.data
  steps = tuple(float(t) for t in streaming.FewStepConfig.from_step_count(config.frames_per_block, 4).steps)
  few = streaming.FewStepConfig(config.frames_per_block, steps, capacity_frames=data.num_frames)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype),
                        nn.unbox(program_lib.abstract_params(net, data)))
  context = jax.ShapeDtypeStruct((1, cfg.text_len, cfg.text_dim), jnp.float32)
  state = jax.eval_shape(lambda p, c: streaming.StreamingSampler(model, p, few).start(c, (data.latent_height, data.latent_width)),
                         params, context)
  k = config.frames_per_block
  block = (1, k, data.latent_height, data.latent_width, cfg.in_dim)
  args = (params, state.cache, jax.ShapeDtypeStruct(block, dtype),
          jax.ShapeDtypeStruct((len(steps) - 1, *block), dtype), jax.ShapeDtypeStruct((), jnp.int32))
  args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_chip), args)
  name = f"{stage_name()}/{SAMPLER}"
  print(f"{name} on one chip of {topology} ({len(steps)} steps + cache refresh per block of {k} frames, "
        f"{config.attention_backend} attention)", flush=True)
  sampler = streaming.StreamingSampler(model, params, few)
  start = time.perf_counter()
  with jax.set_mesh(jax.sharding.Mesh(np.array([device]), ("data",))):  # the target: splash sees a TPU
    compiled = sampler._block_fn(steps).lower(*args).compile()  # pylint: disable=protected-access
  tokens = cfg.tokens_per_frame(data.latent_height, data.latent_width)
  analytic = (len(steps) + 1) * flops.block_call_flops(cfg, tokens, k, data.num_frames - k)
  return report(name, topology, compiled, time.perf_counter() - start, analytic, 1)


def run_child(name: str, topology: str, stream: bool) -> tuple[bool, str]:
  """One update in a child process; a compiler abort there becomes a FAIL line. Returns whether
  it compiled and fit, and its output (empty when `stream`ed straight to this stdout)."""
  proc = subprocess.run([sys.executable, "-m", "cf_jax.compile", *sys.argv[1:], f"--only={name}"],
                        stdout=None if stream else subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
  output = proc.stdout or ""
  if proc.returncode >= 0:
    if proc.returncode:
      sys.stderr.write(proc.stderr[-4000:])
    return proc.returncode == 0, output
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  reason = next((line for line in reversed(lines) if "Check failed" in line or line.startswith("F")), lines[-1] if lines else "")
  sys.stderr.write("\n".join(lines[-20:]) + "\n")
  return False, output + (f"compile: {stage_name()}/{name} {topology} FAIL compiler killed by signal "
                          f"{-proc.returncode}: {reason.strip()[:300]}\n")


def main(argv):
  del argv
  config, topology = _CONFIG.value, _TOPOLOGY.value
  topology_lib.parse(topology)  # a bad name fails here, once
  if _ONLY.value:
    try:
      ok = compile_sampler(config, topology) if _ONLY.value == SAMPLER else compile_update(config, topology, _ONLY.value)
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      print(f"compile: {stage_name()}/{_ONLY.value} {topology} FAIL {type(e).__name__}: {reason[:300]}", flush=True)
      sys.exit(1)
    sys.exit(0 if ok else 1)
  names = [u.name for u in program_lib.make_stage(config).updates] + ([SAMPLER] if _SAMPLER.value else [])
  with concurrent.futures.ThreadPoolExecutor(_JOBS.value) as pool:
    children = [pool.submit(run_child, name, topology, _JOBS.value == 1) for name in names]
    results = []
    for child in children:  # in the stage's order, each as soon as it and those before it are done
      ok, output = child.result()
      print(output, end="", flush=True)
      results.append(ok)
  sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
  cli.run(main, config_flag="config")
