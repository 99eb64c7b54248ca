"""Local llama.cpp backends for the demo and integration tests; needs the `local` extra."""
