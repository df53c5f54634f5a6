"""Unit tests of the gateway's core/ folder."""
