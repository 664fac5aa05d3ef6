"""Output plugins: where records are written (LOGEMU, SYSLOG, JSON, ...)."""
