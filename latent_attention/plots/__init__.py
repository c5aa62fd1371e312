"""Figures (PNG, matplotlib Agg): of sweeps and runs, of Perceiver attention, of scaling."""
