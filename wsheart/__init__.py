"""
wsheart: a WebSocket daemon that keeps long-lived connections alive and honest.

Heartbeats detect dead peers within a stated bound, clients reconnect with
full-jitter backoff, and the whole runs as a twistd plugin under systemd.
"""

__version__ = "0.1.0"
