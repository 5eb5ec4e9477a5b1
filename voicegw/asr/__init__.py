"""Speech-to-text: the provider interface, the on-node engine, failover.

``base`` (interface, events), ``pocketsphinx_local`` (embedded default),
``failover`` (walks the policy-approved list), ``registry`` (providers by name).
"""
