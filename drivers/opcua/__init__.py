"""OPC UA client driver (junction controllers and any OPC UA device).

``mapping`` is pure (profile -> nodes, DataValue -> sample); ``driver`` owns the sessions.
"""
