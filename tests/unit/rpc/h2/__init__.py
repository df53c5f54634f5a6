"""Unit tests of the gateway's rpc/h2/ folder."""
