"""Subcommands of the ``smysl`` CLI (see :mod:`smysl.cli`)."""
