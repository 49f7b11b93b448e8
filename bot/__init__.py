"""modelbot: open-weights LLMs in the chat your team already uses."""

__version__ = "0.1.0"
