"""tubelet.engine."""
