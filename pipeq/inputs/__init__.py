"""A submission's inputs: uploads checked by their content (``checks``), and inputs named
by URL, fetched only from the hosts settings allow (``references``)."""
