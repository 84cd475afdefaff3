"""tubelet.methods."""
