"""Flags and the TOML file -> one typed Settings; model config, batching and session config
parsing.
"""
