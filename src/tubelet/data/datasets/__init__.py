"""tubelet.data.datasets."""
