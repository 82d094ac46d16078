"""autoscope: automated STEM experiments."""

__version__ = "0.1.0"
