"""aiowt middleware."""
