"""The Bitable plugin's local download service (WebSocket) and its desktop window."""
