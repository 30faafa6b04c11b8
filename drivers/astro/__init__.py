"""The astronomical clock as a driver: sun elevation and night, computed by the server."""
