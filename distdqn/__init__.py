"""distdqn: Deep Q-Networks trained fast on one machine and in parallel on Ray."""

__version__ = "0.1.0"
