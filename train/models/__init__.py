"""Template-mixture networks and their baselines (METHOD.md §1-3)."""
