"""Core types, errors (ServingError and its code tables), signatures, TF Serving's wire types and
typed state events: the bottom layer every other folder may import.
"""
