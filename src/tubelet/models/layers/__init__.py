"""tubelet.models.layers."""
