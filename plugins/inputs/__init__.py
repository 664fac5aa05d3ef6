"""Input plugins: event sources (NFLOG, NFCT, ...)."""
