"""Experiment configs (ml_collections, configs as code). Each file exports get_config(arg)."""
