"""optprune."""
