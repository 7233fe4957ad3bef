"""Developer tools that ship with the package (``python -m lightseg.tools.<name>``)."""
