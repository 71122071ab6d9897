"""Time acting on the market: billing, expiry, spot re-resolution, host liveness."""
