"""slingshot: the small-reasoning-model recipe as one resumable pipeline."""

__version__ = "0.1.0"
