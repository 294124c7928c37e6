"""Scoring a pool: finding its images, decoding them, running the model, and the one batched inference loop."""
