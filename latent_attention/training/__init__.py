"""The training run: loop, state, steps, sharding, checkpoints, resume, metrics, evaluation
and the peaks MFU is measured against."""
