"""Subcommands of ``byzedge``, each with ``main(argv) -> int``."""
