"""The command line: ``main`` builds the parser from one module per command (parser and handler together)."""
