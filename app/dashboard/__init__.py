"""The operator's web dashboard: static page, live load sampler and the stats it serves."""
