"""Admin operations: list, pin, load, unload, reload, sync now."""
