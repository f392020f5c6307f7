"""The `autolog` command line and what it runs (demo, replay, plot).

Uses the public API and the store's reader only.
"""
