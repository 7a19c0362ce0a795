"""The umT5 tokenizer and Wan's prompt cleaning (spec: architecture.md §5.5), without transformers.

The reference tokenizes with HF `AutoTokenizer` on the `google/umt5-xxl` folder shipped inside
Wan2.1-T2V-1.3B. That tokenizer is a SentencePiece model (`spiece.model` in the folder) plus an EOS
appended after truncation, so `sentencepiece` alone reproduces it: ids = pieces of the cleaned
text, cut to `seq_len − 1`, then EOS, then pad id up to `seq_len`. Nothing is ever downloaded.
(Not reproduced: HF also parses special-token strings such as `</s>` or `<extra_id_0>` typed
inside a prompt as single tokens; here they are ordinary text.)
"""
import html
import pathlib
import re

import ftfy
import numpy as np
import sentencepiece

from cf_jax.errors import UserError

MODEL_FILE = "spiece.model"
_WHITESPACE = re.compile(r"\s+")


class TokenizerError(UserError):
  """The tokenizer files are missing or unreadable, or a prompt cannot be tokenized. One line."""


def clean_prompt(text: str) -> str:
  """Wan's 'whitespace' cleaning: fix mojibake, unescape HTML twice (prompts scraped from the web
  are often double-escaped), then trim and collapse whitespace runs to one space. Case and
  punctuation are kept."""
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return _WHITESPACE.sub(" ", text).strip()


class UMT5Tokenizer:
  """Prompts -> fixed-length umT5 token ids and attention masks.

  Args:
    directory: the `google/umt5-xxl` tokenizer folder (it holds `spiece.model`).
    seq_len: tokens per prompt, EOS included (512 for Wan).
  """

  def __init__(self, directory: str | pathlib.Path, seq_len: int = 512):
    directory = pathlib.Path(directory)
    model_file = directory / MODEL_FILE
    hint = ("pass the google/umt5-xxl folder shipped with Wan2.1-T2V-1.3B "
            "(wan_models/Wan2.1-T2V-1.3B/google/umt5-xxl)")
    if not directory.is_dir():
      raise TokenizerError(f"tokenizer directory {directory} does not exist; {hint}")
    if not model_file.is_file():
      raise TokenizerError(f"{model_file} does not exist; {hint}")
    if seq_len < 2:
      raise TokenizerError(f"seq_len {seq_len} leaves no room for a token before EOS; use at least 2")
    self._model = sentencepiece.SentencePieceProcessor()
    try:
      self._model.Load(str(model_file))
    except (OSError, RuntimeError) as e:
      raise TokenizerError(f"{model_file} is not a readable SentencePiece model ({e})") from None
    self.seq_len = seq_len
    self.eos_id = self._model.eos_id()
    self.pad_id = self._model.pad_id()
    if self.eos_id < 0 or self.pad_id < 0:
      raise TokenizerError(f"{model_file} defines no EOS or pad token (eos {self.eos_id}, pad {self.pad_id}); "
                           "is it the umT5 spiece.model?")

  @property
  def vocab_size(self) -> int:
    return self._model.get_piece_size()

  def encode(self, prompt: str) -> list[int]:
    """Ids of one cleaned prompt, EOS last, at most `seq_len` of them (no padding)."""
    text = clean_prompt(prompt)
    if not text:
      raise TokenizerError(f"prompt {prompt!r} is empty after cleaning; every prompt needs some text")
    return self._model.EncodeAsIds(text)[: self.seq_len - 1] + [self.eos_id]

  def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, seq_len] int32 padded with the pad id, mask [B, seq_len] int32: 1 up to EOS)."""
    if isinstance(prompts, str):
      raise TokenizerError("pass a list of prompts, not a single string")
    ids = np.full((len(prompts), self.seq_len), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), self.seq_len), np.int32)
    for row, prompt in enumerate(prompts):
      tokens = self.encode(prompt)
      ids[row, : len(tokens)] = tokens
      mask[row, : len(tokens)] = 1
    return ids, mask
