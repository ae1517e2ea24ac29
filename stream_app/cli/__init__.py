"""`rung` command line: `app` is the entry point; each command module stays thin."""
