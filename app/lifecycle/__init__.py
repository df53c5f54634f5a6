"""Model state: ServerCore (the one owner of every model state change), registry, version manager
(transition planner), discovery, config watch, fingerprints, pin state.
"""
