"""The sandbox's Jinja templates (a data package, found through the import system)."""
