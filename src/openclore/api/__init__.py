"""HTTP layer: parse → call a market service → render Clore JSON."""
