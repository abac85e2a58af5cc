"""Base language models: fetching the built-in model offline and loading any base model."""
