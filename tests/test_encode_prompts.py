"""`python -m cf_jax.encode_prompts` end to end with the tiny umT5 and a test-built tokenizer:
records as the in-process `TextEncoder` gives them, resuming after a real interruption, and
one-line errors for bad input."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from cf_jax.data import records
from cf_jax.text import encoder as text_encoder
from tests.conftest import FIXTURES
from tests.test_cli import ENV, run
from tests.test_tokenizer import build_tokenizer

PROMPTS = [
    "a red ball",
    "the dog runs over the river at night",
    "a small &amp; bright boat",
    "caf\u00c3\u00a9 in the city",
    "a cat jumps through the dark forest with a large yellow moon over the snow",
    "green tree",
    "  the  horse   swims  ",
]
SEQ_LEN = 16

# Runs the CLI in a fresh process whose encoder raises KeyboardInterrupt on its third batch, as a
# job killed half-way would stop.
_INTERRUPTED = """
import sys
from absl import app
from cf_jax import encode_prompts
from cf_jax.text import encoder
calls = []
original = encoder.TextEncoder.__call__
def interrupted(self, prompts):
  calls.append(prompts)
  if len(calls) == 3:
    raise KeyboardInterrupt
  return original(self, prompts)
encoder.TextEncoder.__call__ = interrupted
app.run(encode_prompts.main)
"""


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> pathlib.Path:
  return build_tokenizer(tmp_path_factory.mktemp("umt5_tokenizer"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
  path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
  return path


def args(prompts, out, tokenizer_dir, t5=FIXTURES / "umt5_tiny.pt", *extra):
  return ["--prompts", str(prompts), "--out", str(out), "--t5_checkpoint", str(t5), "--tokenizer",
          str(tokenizer_dir), "--model", "tiny", "--seq_len", str(SEQ_LEN), "--batch_size", "2",
          "--items_per_shard", "2", "--dtype", "float32", *extra]


@pytest.fixture(scope="module")
def expected(tokenizer_dir):
  encode = text_encoder.TextEncoder.load(str(FIXTURES / "umt5_tiny.pt"), str(tokenizer_dir), "tiny", SEQ_LEN)
  return encode(PROMPTS)  # embeds [7, 16, 64], lengths [7]


def check_dataset(out, expected):
  embeds, lengths = expected
  ds = list(records.iterate(out))
  assert len(ds) == len(PROMPTS)
  assert [r["index"] for r in ds] == list(range(len(PROMPTS)))  # no duplicates, no gaps, in order
  assert [r["prompt"] for r in ds] == PROMPTS
  for r, e, n in zip(ds, embeds, lengths):
    assert r["prompt_embeds"].shape == (SEQ_LEN, 64) and r["prompt_embeds"].dtype == np.float32
    assert r["length"] == n
    np.testing.assert_allclose(r["prompt_embeds"], e, atol=1e-5)
    assert np.all(r["prompt_embeds"][n:] == 0.0) and np.all(np.abs(r["prompt_embeds"][:n]).sum(-1) > 0)
  assert lengths[4] == SEQ_LEN  # the long prompt was truncated (EOS kept)
  assert not list(pathlib.Path(out).glob(".*tmp"))


def test_encode_prompts_writes_what_the_encoder_gives(tmp_path, tokenizer_dir, prompts_file, expected):
  result = run("cf_jax.encode_prompts", *args(prompts_file, tmp_path / "out", tokenizer_dir))
  assert result.returncode == 0, result.stderr
  assert f"wrote {len(PROMPTS)} prompt embeddings" in result.stdout
  check_dataset(tmp_path / "out", expected)


def test_resume_after_interruption(tmp_path, tokenizer_dir, prompts_file, expected):
  converted = tmp_path / "umt5_tiny"
  conv = run("cf_jax.convert", "--kind", "t5", "--src", str(FIXTURES / "umt5_tiny.pt"), "--model", "tiny",
             "--out", str(converted))
  assert conv.returncode == 0, conv.stderr
  out = tmp_path / "out"
  cli = args(prompts_file, out, tokenizer_dir, converted)
  killed = subprocess.run([sys.executable, "-c", _INTERRUPTED, *cli], capture_output=True, text=True, env=ENV,
                          timeout=600)
  assert killed.returncode != 0
  done = sorted(out.glob("shard-*"))
  assert [p.name for p in done] == [records.shard_name(i, 4) for i in (0, 1)]
  assert not (out / records.MANIFEST).exists()
  with pytest.raises(ValueError, match="incomplete"):
    records.dataset(out)
  stamps = {p.name: p.stat().st_mtime_ns for p in done}

  resumed = run("cf_jax.encode_prompts", *cli)
  assert resumed.returncode == 0, resumed.stderr
  assert {p.name: p.stat().st_mtime_ns for p in done} == stamps  # finished shards were not redone
  check_dataset(out, expected)


def error_line(result) -> str:
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  return lines[0]


def test_bad_input_exits_with_one_line(tmp_path, tokenizer_dir, prompts_file):
  missing = run("cf_jax.encode_prompts", *args(tmp_path / "nope.txt", tmp_path / "a", tokenizer_dir))
  assert "nope.txt does not exist" in error_line(missing)

  blank = tmp_path / "blank.txt"
  blank.write_text("a red ball\n\ngreen tree\n")
  assert "line 2 is empty" in error_line(run("cf_jax.encode_prompts", *args(blank, tmp_path / "b", tokenizer_dir)))

  cleans_to_nothing = tmp_path / "nbsp.txt"
  cleans_to_nothing.write_text("a red ball\n&nbsp;\n")
  line = error_line(run("cf_jax.encode_prompts", *args(cleans_to_nothing, tmp_path / "c", tokenizer_dir)))
  assert "line 2 ('&nbsp;') is empty after cleaning" in line

  no_tokenizer = run("cf_jax.encode_prompts", *args(prompts_file, tmp_path / "d", tmp_path / "no_tokenizer"))
  assert "no_tokenizer does not exist" in error_line(no_tokenizer)

  no_t5 = run("cf_jax.encode_prompts", *args(prompts_file, tmp_path / "e", tokenizer_dir, tmp_path / "t5.pth"))
  assert "t5.pth does not exist" in error_line(no_t5)
  assert not any((tmp_path / n / records.MANIFEST).exists() for n in "abcde")


def test_npy_format_writes_one_array_in_prompt_order(tmp_path, tokenizer_dir, prompts_file, expected):
  out = tmp_path / "prompts.npy"
  result = run("cf_jax.encode_prompts", *args(prompts_file, out, tokenizer_dir, FIXTURES / "umt5_tiny.pt",
                                              "--format", "npy"))
  assert result.returncode == 0, result.stderr
  embeds = np.load(out)
  assert embeds.shape == (len(PROMPTS), SEQ_LEN, 64) and embeds.dtype == np.float32
  np.testing.assert_allclose(embeds, expected[0], atol=1e-5)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.npy"]  # no temporaries
  wrong = run("cf_jax.encode_prompts", *args(prompts_file, tmp_path / "dir", tokenizer_dir, FIXTURES / "umt5_tiny.pt",
                                             "--format", "npy"))
  assert wrong.returncode == 1 and "name ending in .npy" in wrong.stderr and not (tmp_path / "dir").exists()
