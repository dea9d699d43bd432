"""blockmix data: DALI pipelines, the sample order blockmix owns, and dataset preparation."""
