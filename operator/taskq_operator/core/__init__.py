"""Pure operator core: no I/O, only data in and data out (checked by `.importlinter`, mypy strict)."""
