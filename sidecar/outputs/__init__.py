"""Every way credentials leave the daemon: HTTP endpoints, IMDS, exec, export formats."""
