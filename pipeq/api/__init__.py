"""The REST API and the web page."""
