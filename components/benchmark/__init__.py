"""Benchmark a base model and its fine-tuned version with lm-evaluation-harness."""
