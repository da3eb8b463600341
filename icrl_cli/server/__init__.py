"""`icrl serve`: an OpenAI-compatible HTTP server for one model."""
