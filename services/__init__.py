"""The runnable services: `python -m services.bdh`, `python -m services.gpt2`, and the gateway."""
