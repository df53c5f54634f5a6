"""Model sync: storage backends, MD5SUMS manifest, sync pass, loop, publish CLI."""
