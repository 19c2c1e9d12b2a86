"""The REST resources under ``/api/v1`` (each module one router) and the WebSocket."""
