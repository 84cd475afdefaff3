"""tubelet.cli."""
