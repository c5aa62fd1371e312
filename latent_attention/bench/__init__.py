"""Benchmarks: the train step, its per-op profile, decode against the bandwidth bound, and
time against input length. They time the models and the training run; nothing below imports them."""
