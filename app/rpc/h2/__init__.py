"""tfgate's own HTTP/2 transport for gRPC: frames, connection, call, replies."""
