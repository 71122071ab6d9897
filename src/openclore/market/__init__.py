"""Market use cases. Each function runs inside the caller's single transaction."""
