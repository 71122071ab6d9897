"""The console's pages, one module per audience; each lists its routes in ``ROUTES``."""
