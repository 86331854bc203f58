"""Server-side session census: read-only counts and ages of the sessions a server holds.

A census job queries the server on the scheduler; ``record()`` publishes the result as gauges, so a
scrape only reads values already computed and never queries a server.
"""
