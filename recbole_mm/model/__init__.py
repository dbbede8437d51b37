"""The plugin's models (one per file) and their reusable layers (``layers/``)."""
