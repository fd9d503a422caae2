"""Routes: parse requests, call services, format responses. No generation logic here."""
