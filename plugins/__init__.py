"""Built-in family plugins, one module per model family, registered like third-party ones."""
