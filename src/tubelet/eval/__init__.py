"""tubelet.eval."""
