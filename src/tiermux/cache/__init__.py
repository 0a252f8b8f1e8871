"""Answers paid for once: the exact response cache and the sharing of identical calls in flight.

``key`` names an answer, ``store`` keeps answers in a worker, ``shared`` in Redis for every
instance, ``flight`` shares one upstream call, ``replay`` turns an answer into either form (JSON
or a stream), and ``responses`` puts these together for the proxy.
"""
