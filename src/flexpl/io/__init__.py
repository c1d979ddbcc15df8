"""Input and output below everything: the results writer, the console, and test-only fault injection."""
