"""Unit tests of the gateway's ops/ folder."""
