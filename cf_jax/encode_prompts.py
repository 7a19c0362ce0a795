"""`python -m cf_jax.encode_prompts`: prompts → umT5 text embeddings, as ArrayRecord shards or one `.npy`.

  python -m cf_jax.encode_prompts --prompts prompts/vidprom_filtered_extended.txt --out data/prompt_embeds \
      --t5_checkpoint wan_models/Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth \
      --tokenizer wan_models/Wan2.1-T2V-1.3B/google/umt5-xxl
  # a few prompts for `python -m cf_jax.sample --embeddings prompts.npy`
  python -m cf_jax.encode_prompts --prompts prompts.txt --format npy --out prompts.npy \
      --t5_checkpoint wan_models/Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth \
      --tokenizer wan_models/Wan2.1-T2V-1.3B/google/umt5-xxl

One prompt per line. Records hold `prompt_embeds [512, 4096]` (rows past the prompt exactly 0, as
the reference's text encoder gives them), `length`, `prompt` and `index`. DMD training is data-free
apart from these, so this is its dataset. Each host writes its own shards and encodes its batches
over its local devices; an interrupted run resumes where it stopped (`cf_jax.data.records`).
`--format npy` writes one float32 array [N, seq_len, dim] instead, in prompt order, for sampling.
"""
import os
import pathlib

from absl import flags
from absl import logging
import jax
import numpy as np

from cf_jax import checkpoint
from cf_jax import cli
from cf_jax.data import records
from cf_jax.errors import UserError
from cf_jax.text import encoder as text_encoder
from cf_jax.text.tokenizer import clean_prompt

_PROMPTS = flags.DEFINE_string("prompts", None, "Text file, one prompt per line.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output dataset directory, or a .npy file with --format npy.",
                           required=True)
_FORMAT = flags.DEFINE_enum("format", "records", ["records", "npy"], "records: ArrayRecord shards (a training "
                            "dataset; resumable); npy: one float32 [N, seq_len, dim] array for sample --embeddings.")
_T5 = flags.DEFINE_string("t5_checkpoint", None, "Converted umT5 or models_t5_umt5-xxl-enc-bf16.pth.",
                          required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Directory with the google/umt5-xxl spiece.model.",
                                 required=True)
_MODEL = flags.DEFINE_enum("model", "umt5_xxl", ["umt5_xxl", "tiny"], "umT5 preset (for a .pth).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 512, "Tokens per prompt (padded / truncated, EOS kept).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Prompts per encoder call.")
_ITEMS_PER_SHARD = flags.DEFINE_integer("items_per_shard", 1024, "Prompts per ArrayRecord shard.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Stored embedding dtype.")


def read_prompts(path: str) -> list[str]:
  file = pathlib.Path(path)
  if not file.is_file():
    raise UserError(f"--prompts {file} does not exist")
  prompts = file.read_text(encoding="utf-8").splitlines()
  for i, p in enumerate(prompts):
    if not p.strip():
      raise UserError(f"{file}: line {i + 1} is empty; remove blank lines")
    # Checked here, not when its batch comes up: a bad line fails the run before any encoding.
    if not clean_prompt(p):
      raise UserError(f"{file}: line {i + 1} ({p[:40]!r}) is empty after cleaning (HTML entities, whitespace)")
  if not prompts:
    raise UserError(f"{file} holds no prompts")
  return prompts


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run()


def write_npy(prompts: list[str], encode, path: pathlib.Path) -> None:
  """All embeddings in one float32 file (bfloat16 has no portable .npy form), written beside
  `path` and renamed when complete."""
  embeds = np.concatenate([encode(prompts[i : i + _BATCH_SIZE.value])[0]
                           for i in range(0, len(prompts), _BATCH_SIZE.value)]).astype(np.float32)  # [N, L, D]
  tmp = path.with_name(f".{path.name}.tmp.npy")
  try:
    np.save(tmp, embeds)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def run():
  prompts = read_prompts(_PROMPTS.value)
  out = pathlib.Path(_OUT.value)
  if _FORMAT.value == "npy" and out.suffix != ".npy":
    raise UserError(f"--format npy writes one .npy file; give --out a name ending in .npy, not {out}")
  checkpoint.check_writable(_OUT.value, "--out")
  encode = text_encoder.TextEncoder.load(_T5.value, _TOKENIZER.value, _MODEL.value, _SEQ_LEN.value)
  if _FORMAT.value == "npy":
    write_npy(prompts, encode, out)
    print(f"wrote {len(prompts)} prompt embeddings to {out}")
    return

  def encode_batch(batch, first_index):
    embeds, lengths = encode(list(batch))
    embeds = embeds.astype(_DTYPE.value if _DTYPE.value == "float32" else text_encoder.BF16)
    return [{"index": first_index + i, "prompt": p, "length": int(lengths[i]), "prompt_embeds": embeds[i]}
            for i, p in enumerate(batch)]

  records.write_sharded(
      _OUT.value, prompts, encode_batch, _ITEMS_PER_SHARD.value, _BATCH_SIZE.value, "prompts",
      metadata={"kind": "prompt_embeds", "seq_len": _SEQ_LEN.value, "dtype": _DTYPE.value,
                "dim": encode.config.dim},
  )
  if jax.process_index() == 0:
    print(f"wrote {len(prompts)} prompt embeddings to {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
