"""Unit tests of the gateway's rpc/ folder."""
