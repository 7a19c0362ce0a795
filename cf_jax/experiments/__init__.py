"""Experiments that test the paper's claims on the toy recipe; each is a CLI of its own."""
