"""Prompt cleaning and the umT5 tokenizer, on a tiny SentencePiece model trained here with umT5's
special ids (pad 0, EOS 1, unk 2, no BOS)."""
import pathlib
import random

import numpy as np
import pytest
import sentencepiece

from cf_jax.text import tokenizer
from cf_jax.text.tokenizer import TokenizerError, UMT5Tokenizer, clean_prompt

_WORDS = ("the a red blue green yellow ball cube cone cat dog bird fish horse runs jumps flies swims over under "
          "through quickly slowly video of in on with at night day city river mountain forest ocean sky cloud "
          "rain snow sun moon small large bright dark car train boat house tree flower").split()


def build_tokenizer(directory: pathlib.Path) -> pathlib.Path:
  """Trains a ~80-piece unigram model into `directory/spiece.model` (about a tenth of a second)."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = random.Random(0)
  corpus = directory / "corpus.txt"
  corpus.write_text("\n".join(" ".join(rng.choice(_WORDS) for _ in range(8)) for _ in range(500)))
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(directory / "spiece"), vocab_size=100, hard_vocab_limit=False,
      model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
  )
  return directory


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> pathlib.Path:
  return build_tokenizer(tmp_path_factory.mktemp("umt5_tokenizer"))


@pytest.fixture(scope="module")
def pieces(tokenizer_dir):
  return sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_dir / "spiece.model"))


@pytest.mark.parametrize("raw, clean", [
    ("a red &amp; blue ball", "a red & blue ball"),
    ("&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;", "<b>bold</b>"),  # double-escaped HTML
    ("  a\tred \n\n ball  ", "a red ball"),
    ("caf\u00c3\u00a9 at night", "caf\u00e9 at night"),  # mojibake (UTF-8 read as Latin-1)
    ("A Dog, Running!", "A Dog, Running!"),  # case and punctuation kept
    ("&nbsp;", ""),
])
def test_clean_prompt(raw, clean):
  assert clean_prompt(raw) == clean


def test_ids_end_with_eos_and_pad_with_zero(tokenizer_dir, pieces):
  tok = UMT5Tokenizer(tokenizer_dir, seq_len=16)
  ids, mask = tok(["a red ball", "the dog runs over the river"])
  assert ids.shape == mask.shape == (2, 16) and ids.dtype == mask.dtype == np.int32
  for row, text in enumerate(["a red ball", "the dog runs over the river"]):
    expected = pieces.encode(text) + [1]
    n = len(expected)
    assert list(ids[row, :n]) == expected and np.all(ids[row, n:] == 0)
    assert np.all(mask[row, :n] == 1) and np.all(mask[row, n:] == 0)
  assert tok.eos_id == 1 and tok.pad_id == 0


def test_prompts_are_cleaned_before_tokenizing(tokenizer_dir):
  tok = UMT5Tokenizer(tokenizer_dir, seq_len=16)
  messy, clean = tok(["  a red\t\tball &amp;amp;  "]), tok(["a red ball &"])
  np.testing.assert_array_equal(messy[0], clean[0])
  np.testing.assert_array_equal(messy[1], clean[1])


def test_truncation_keeps_eos_last(tokenizer_dir, pieces):
  text = "the small dog runs quickly through the dark forest at night with a bright moon"
  full = pieces.encode(text)
  assert len(full) > 8
  ids, mask = UMT5Tokenizer(tokenizer_dir, seq_len=8)([text])
  assert list(ids[0]) == full[:7] + [1] and np.all(mask == 1)
  exact, exact_mask = UMT5Tokenizer(tokenizer_dir, seq_len=len(full) + 1)([text])  # fits exactly
  assert list(exact[0]) == full + [1] and np.all(exact_mask == 1)


def test_missing_files_raise_one_line_errors(tmp_path, tokenizer_dir):
  with pytest.raises(TokenizerError, match=f"directory {tmp_path / 'nope'} does not exist"):
    UMT5Tokenizer(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(TokenizerError, match="spiece.model does not exist; pass the google/umt5-xxl folder"):
    UMT5Tokenizer(tmp_path / "empty")
  (tmp_path / "corrupt").mkdir()
  (tmp_path / "corrupt" / tokenizer.MODEL_FILE).write_bytes(b"not a model")
  with pytest.raises(TokenizerError, match="not a readable SentencePiece model") as info:
    UMT5Tokenizer(tmp_path / "corrupt")
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("prompt", ["", "   \t\n", "&nbsp;"])
def test_empty_prompt_is_an_error(tokenizer_dir, prompt):
  with pytest.raises(TokenizerError, match="empty after cleaning"):
    UMT5Tokenizer(tokenizer_dir, seq_len=8)(["a red ball", prompt])


def test_a_single_string_is_refused(tokenizer_dir):
  with pytest.raises(TokenizerError, match="list of prompts"):
    UMT5Tokenizer(tokenizer_dir, seq_len=8)("a red ball")
