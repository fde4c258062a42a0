"""Training, evaluation, datasets and replay tools (may import sim2real_perception)."""
