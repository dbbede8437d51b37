"""Feature files, the feature store and the multimodal dataset class."""
