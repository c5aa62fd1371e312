"""Studies: sweeps and their results pages, and the analyses behind the results (context length,
MHA -> MLA conversion, decode drift, MQAR errors, statistics over seeds)."""
