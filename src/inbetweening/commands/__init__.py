"""The application layer: the commands of `inbetween` (the entry point is inbetweening.cli)."""
