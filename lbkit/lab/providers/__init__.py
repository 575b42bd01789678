"""Providers: the ways one topology is brought to life (netns, local, docker)."""
