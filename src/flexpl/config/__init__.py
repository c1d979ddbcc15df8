"""The scenario: its schema by section, loading (built-in names, files, ``--set``), and user code by import path."""
