"""Pure policy over where callers' data may be processed.

``capabilities`` (what a provider declares), ``subprocessors`` (the published list),
``regions`` (locations → policy regions, transfer mechanisms), ``selection`` (the one
function that chooses a provider and explains refusals), ``processing`` (records of
each provider use), ``errors`` (how providers fail), ``registry`` (by name).
"""
