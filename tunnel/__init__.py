"""tunnel: the reverse tunnel through which the cloud reaches edge nodes behind NAT."""
