"""Server-side traffic rules: A/B splits, canary ramps, shadow traffic, per-arm statistics."""
