"""A private Petals swarm on this machine: the launcher and the server entry point."""
