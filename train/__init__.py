"""blockmix training: template-mixture models, configs, the DeepSpeed engine and the CLI."""
