"""
wsheart's test suite (trial).  Unit tests drive time with task.Clock and
bytes with in-memory transports; modules named test_integration_* use real
loopback sockets and processes, bounded in time.
"""
