"""Sub-commands of the ``rp-diffusers`` CLI; each module has ``add_parser(subparsers)`` and sets ``func``."""
