"""TF Serving's REST API (raw ASGI fast path), the uvicorn server, ops and admin routes."""
