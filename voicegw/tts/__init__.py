"""Text-to-speech: the provider interface, the on-node engine, failover.

``base`` (interface, resampling stream), ``espeak_local`` (embedded default),
``failover`` (walks the policy-approved list), ``registry`` (providers by name).
"""
