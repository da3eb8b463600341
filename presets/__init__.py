"""Bundled run presets (TOML); a package only so that they install with icrl."""
