"""L7: an HTTP router (reverse proxy) that reads requests and routes by path, host and headers."""
