"""The request path: service (resolve -> cache -> batcher -> worker -> encode), batcher, batching
policy, inference auth.
"""
