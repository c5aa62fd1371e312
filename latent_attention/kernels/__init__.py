"""Decode kernels and the paged latent cache they read (attention layer; docs/design.md 4.1).

`paged_cache`: the paged, ragged cache (pure functions on arrays). `latent_decode`: the Pallas
kernel for absorbed MLA / GLA decode attention over it (interpret mode on CPU).
"""
