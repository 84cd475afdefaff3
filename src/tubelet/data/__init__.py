"""tubelet.data."""
