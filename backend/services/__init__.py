"""Services: what the APIs do, independent of how requests arrive (routes) and of Petals (engine)."""
