"""tubelet.models.convert."""
