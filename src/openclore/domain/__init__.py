"""Pure market rules: money units, fees, the spot book, validation, error names. No I/O."""
