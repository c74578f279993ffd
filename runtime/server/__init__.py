"""The HTTP front end (`lmlang serve`): native, OpenAI-compatible and metrics endpoints."""
