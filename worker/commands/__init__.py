"""The commands of the `partner-sync` command line, one module each."""
