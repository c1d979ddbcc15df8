"""Input and output below everything: the results writer, the console, user code named by import path, and test-only
fault injection."""
