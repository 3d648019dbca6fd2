"""The LLM operator and what only it needs: chat backends, reply templates and parsers, prompts."""
