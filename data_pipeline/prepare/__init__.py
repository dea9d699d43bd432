"""Dataset preparation: the index the loader reads, WebDataset shards and the built-in demo data."""
