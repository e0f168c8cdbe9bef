"""The `layerhoard` command line: parses arguments, shows progress, prints results; no logic of its own."""
