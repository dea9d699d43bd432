"""blockmix on SLURM: submitit launching, paired sweeps and comparison reports."""
