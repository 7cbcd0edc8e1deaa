"""meshinversion."""
