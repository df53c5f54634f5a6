"""Unit tests of the gateway's runtime/ folder."""
