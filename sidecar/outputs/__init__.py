"""Ways credentials leave the daemon other than the HTTP endpoints: export formats, files."""
