"""siteboot: run privilege-separated supervisord instances for a site, without root."""

__version__ = "0.1.0"
