"""Orchestration: Ray (Train, tasks, Tune) and MLflow around the pure-PyTorch core."""
