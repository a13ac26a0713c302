"""The workspace file: its model, its loading, and the starter file written on a first run."""
