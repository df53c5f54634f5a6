"""Unit tests of the gateway's settings/ folder."""
