"""The scenario: its schema by section, and loading (built-in names, files, ``--set``)."""
