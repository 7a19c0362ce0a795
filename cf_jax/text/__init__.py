"""Prompt text: cleaning and umT5 tokenization (`tokenizer`), and prompts -> embeddings (`encoder`)."""
